"""The report's transfer section: ``kdgen transfer``'s probe results (``RUN/transfer/*.json``) as tables.

The probes themselves are trained by :mod:`kdgen.running.transfer`; this module only reads their rows.
"""

from __future__ import annotations

from pathlib import Path

from kdgen.checkpoint import read_json
from kdgen.folders import TRANSFER_DIR, Row
from kdgen.reporting.formatting import text_table
from kdgen.reporting.results import Results
from kdgen.reporting.tables import diff_table


def load_transfer(run_dir: Path) -> dict[str, list[Row]]:
    """``{probe name: rows}`` of every ``RUN/transfer/*.json`` (none: {})."""
    found = {}
    for path in sorted((Path(run_dir) / TRANSFER_DIR).glob("*.json")):
        payload = read_json(path)
        rows = payload.get("rows") if isinstance(payload, dict) else None
        if isinstance(rows, list) and rows:
            found[str(rows[0].get("probe", path.stem))] = rows
    return found


def transfer_blocks(run_dir: Path) -> list[tuple]:
    """The report section: per probe data set, test top-1 and NLL per arm and generation, and the arms
    compared per generation, paired by seed (tolerant − strict, strict − baseline)."""
    probes = load_transfer(run_dir)
    if not probes:
        return []
    blocks: list[tuple] = [("h2", "Transfer: linear probes on other data"),
                           ("p", "Each frozen model's penultimate features (the input of its final linear layer) feed a "
                                 "logistic-regression probe trained on the probe data's training split; its C was chosen "
                                 "on the probe data's val split; the numbers are on the probe data's test split. "
                                 "`kdgen transfer RUN --data NAME` adds a probe.")]
    for probe, rows in probes.items():
        blocks.append(("table", f"Probe on {probe}: test split, mean ± std over seeds", *_probe_table(rows)))
        header, diffs = diff_table(Results(rows), "test")
        if diffs:
            blocks.append(("table", f"Probe on {probe}: arms compared, paired by seed (test split)", header, diffs))
    return blocks


def transfer_text(path: Path) -> str:
    """The console summary of one transfer file: probe test top-1 per arm and generation."""
    return text_table(*_probe_table(read_json(path)["rows"]))


def _probe_table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Probe test top-1 and NLL per arm and generation, mean ± std over seeds."""
    cells = Results(rows).cells_in("test")
    return (["arm", "gen", "n", "probe top1 (test)", "probe NLL (test)"],
            [[c.arm, str(c.generation), str(c.n), c.format("top1"), c.format("nll")] for c in cells])
