"""The summary of a ``kdgen sweep`` folder, from the val rows of its points only.

Every metric of every arm and generation, mean ± std over seeds, per grid point; the selected
cell (``--select``, default the tolerant arm's last generation) against the reference point and
against the strict arm, paired by seed; the best point on val and the ``kdgen run`` command that
evaluates it on test; and one plot per swept key through the best point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdgen.checkpoint import read_json, write_json
from kdgen.errors import CheckpointError
from kdgen.arms import sort_key as arm_sort_key
from kdgen.report import format_cell, markdown_table, paired_stats, summarize, values_by_cell
from kdgen.report_page import write_html
from kdgen.run_folder import Row
from kdgen.sweep_plan import SweepPlan, axis_keys, parse_select
from kdgen.formatting import p_value, signed

SPLIT = "val"  # a sweep chooses; it never reads the test split
SHOWN = ("top1", "nll", "conf", "entropy", "secondary_mass", "semantic")


def _load_plan(out: Path) -> dict[str, Any]:
    path = out / "sweep.json"
    if not path.is_file():
        raise CheckpointError(f"{out}: not a sweep folder (no sweep.json)")
    plan = read_json(path)
    if not isinstance(plan, dict) or not isinstance(plan.get("points"), list):
        raise CheckpointError(f"{path}: not a kdgen sweep file")
    return plan


def _point_rows(out: Path, name: str) -> tuple[list[Row], bool]:
    path = out / "runs" / name / "results.json"
    if not path.is_file():
        return [], False
    payload = read_json(path)
    return payload.get("rows", []), bool(payload.get("complete"))


def sweep_summary(out: Path) -> dict[str, Any]:
    """The sweep's results as data (also written to ``sweep_summary.json``)."""
    from kdgen.config import build_config

    plan_json = _load_plan(out)
    plan = SweepPlan.from_json(plan_json)
    cfg = build_config(plan.base, "sweep base")
    arm, generation, kind = parse_select(plan.select, cfg)
    cell = (arm, generation, kind)
    points = plan.points()
    all_rows = {p.name: _point_rows(out, p.name) for p in points}
    reference = points[plan.reference]
    ref_values = values_by_cell(all_rows[reference.name][0], SPLIT).get(cell, {})
    entries = []
    for point in points:
        all_splits, complete = all_rows[point.name]
        top1 = values_by_cell(all_splits, SPLIT)
        score = top1.get(cell, {})
        # The patriarch's top-1 on its own training sample: did it converge?
        train_top1 = values_by_cell(all_splits, "train").get((arm, 0, "single"), {})
        entry: dict[str, Any] = {"name": point.name, "settings": point.settings, "complete": complete,
                                 "cells": summarize(r for r in all_splits if r["split"] == SPLIT), "score_n": len(score),
                                 "patriarch_train_top1": _mean(train_top1)}
        if score:
            entry["score_mean"] = _mean(score)
            entry["score_nll"] = _mean(values_by_cell(all_splits, SPLIT, "nll").get(cell, {}))
            entry["vs_reference"] = paired_stats(score, ref_values) if point is not reference else None
            if "strict" in cfg.generations.arms and arm != "strict":
                entry["vs_strict"] = paired_stats(score, top1.get(("strict", generation, kind), {}))
        entries.append(entry)
    scored = [e for e in entries if e["complete"] and "score_mean" in e]
    best = max(scored, key=lambda e: (e["score_mean"], -e["score_nll"])) if scored else None
    best_point = next((p for p in points if best is not None and p.name == best["name"]), None)
    return {"select": {"arm": arm, "generation": generation, "kind": kind, "metric": "top1", "split": SPLIT},
            "grid": plan_json["grid"], "reference": reference.name, "points": entries,
            "best": best["name"] if best else None, "best_settings": best["settings"] if best else None,
            "test_command": plan.test_command(best_point) if best_point is not None else None}


def _mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values) if values else float("nan")


def _cell(entry: dict[str, Any], arm: str, generation: int, kind: str = "single") -> dict[str, Any] | None:
    return next((c for c in entry["cells"] if c["arm"] == arm and c["generation"] == generation
                 and c["kind"] == kind), None)


def _diff(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    return f"{signed(d['mean'])} ± {d['std']:.2f} (p {p_value(d['p'])})"


def build_sweep_report(out: Path) -> Path:
    """Write ``sweep.md``, ``sweep.html``, ``sweep_summary.json`` and ``plots/`` for the sweep in ``out``."""
    from kdgen.plots import sweep_plot

    out = Path(out)
    summary = sweep_summary(out)
    select = summary["select"]
    arm, last = select["arm"], select["generation"]
    axes = [k for k, _ in summary["grid"]]
    keys = [key for axis in axes for key in axis_keys(axis)]
    done = sum(e["complete"] for e in summary["points"])
    seeds = sorted({c["n"] for e in summary["points"] for c in e["cells"]}, reverse=True)
    what = f"{arm} generation {last}" + (" ensemble" if select["kind"] == "ensemble" else "")
    intro = [f"Grid: {'; '.join(f'`{k}` ∈ {v}' for k, v in summary['grid'])} — {done} of {len(summary['points'])} "
             f"points complete. Scored on the **val split only**; mean ± std over seeds (n up to {seeds[0] if seeds else 0}).",
             f"Score: val top-1 of {what}. Paired differences pair seeds: against the reference point "
             f"`{summary['reference']}`" + (f", and against the strict arm's generation {last} at the same point."
                                            if any("vs_strict" in e for e in summary["points"])
                                            else "." if arm == "strict" else " (the strict arm was not run)."),
             "Units shared between points (the baseline and strict arms in a tolerance sweep) were trained once."]
    if summary["best"] is not None:
        best = next(e for e in summary["points"] if e["name"] == summary["best"])
        intro.append(f"**Best point on val: `{summary['best']}`** ({', '.join(f'{k}={v}' for k, v in best['settings'].items())}), "
                     f"val top-1 {best['score_mean']:.2f}. Evaluate it on test, once: `{summary['test_command']}`")
    gens = range(0, last + 1)
    header = ["point", *keys] + [f"{arm} g{g} top1" for g in gens] + \
             [f"{arm} g0 conf", f"{arm} g0 train top1", "Δ vs reference", "Δ vs strict"]
    body = []
    for e in summary["points"]:
        state = "" if e["complete"] else " (running)" if (out / "runs" / e["name"]).is_dir() else " (not run yet)"
        line = [e["name"] + state] + [str(e["settings"][k]) for k in keys]
        line += [format_cell(_cell(e, arm, g), "top1") for g in gens]
        train = e["patriarch_train_top1"]
        line += [format_cell(_cell(e, arm, 0), "conf", 3), "–" if math.isnan(train) else f"{train:.2f}",
                 _diff(e.get("vs_reference")), _diff(e.get("vs_strict"))]
        body.append(line)
    long_header = ["point", "arm", "gen", "kind", "n"] + list(SHOWN)
    long_body = []
    for e in summary["points"]:
        for c in sorted(e["cells"], key=lambda c: (*arm_sort_key(c["arm"]), c["generation"], c["kind"] != "single")):
            long_body.append([e["name"], c["arm"], str(c["generation"]), c["kind"], str(c["n"])] +
                             [format_cell(c, m, 2 if m in ("top1", "semantic") else 3) for m in SHOWN])
    plots = [sweep_plot(summary, key, out / "plots" / f"sweep_{key.replace('.', '_').replace(',', '+')}.png") for key in axes]
    plots = [p for p in plots if p is not None]
    tables = [("Grid points (val split)", header, body), ("Every arm and generation (val split)", long_header, long_body)]
    md = ["# kdgen sweep", "", *intro, ""]
    for title, h, b in tables:
        md += [f"## {title}", "", markdown_table(h, b), ""]
    md += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    (out / "sweep.md").write_text("\n".join(md), encoding="utf-8")
    write_json(out / "sweep_summary.json", summary)
    write_html(out / "sweep.html", "kdgen sweep", intro, tables, plots)
    return out / "sweep.md"
