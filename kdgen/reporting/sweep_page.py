"""The summary of a ``kdgen sweep`` folder, from the val rows of its points only.

Every metric of every arm and generation, mean ± std over seeds, per grid point; the selected
cell (``--select``, default the tolerant arm's last generation) against the reference point and
against the selected arm's main rival (its first ``compare_with`` that ran: strict for tolerant),
paired by seed; the best point on val and the ``kdgen run`` command that evaluates it on test; and
one plot per swept key through the best point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdgen import arms as arm_registry
from kdgen.checkpoint import read_json, write_json, write_text
from kdgen.errors import CheckpointError
from kdgen.reporting.formatting import difference, markdown_table, p_value
from kdgen.reporting.page import write_html
from kdgen.reporting.results import METRICS, Results, format_cell
from kdgen.reporting.statistics import Paired, paired
from kdgen.sweep_plan import (SWEEP_SPLIT, PointSummary, SweepPlan, SweepSummary, axis_keys, label_value, mean_of,
                              parse_select)

SPLIT = SWEEP_SPLIT
SHOWN = tuple(m.name for m in METRICS if m.sweep)


def _load_plan(out: Path) -> dict[str, Any]:
    path = out / "sweep.json"
    if not path.is_file():
        raise CheckpointError(f"{out}: not a sweep folder (no sweep.json)")
    plan = read_json(path)
    if not isinstance(plan, dict) or not isinstance(plan.get("points"), list):
        raise CheckpointError(f"{path}: not a kdgen sweep file")
    return plan


def _point_results(out: Path, name: str) -> Results:
    """The val and train-sample rows of one point (never its test rows: a sweep does not read them)."""
    path = out / "runs" / name / "results.json"
    if not path.is_file():
        return Results([], complete=False)
    payload = read_json(path)
    rows = [r for r in payload.get("rows", []) if r["split"] != "test"]
    return Results(rows, complete=bool(payload.get("complete")))


def sweep_summary(out: Path) -> SweepSummary:
    """The sweep's results (also written to ``sweep_summary.json``)."""
    from kdgen.config import build_config

    plan_json = _load_plan(out)
    plan = SweepPlan.from_json(plan_json)
    cfg = build_config(plan.base, "sweep base")
    arm, generation, kind = parse_select(plan.select, cfg)
    cell = (arm, generation, kind)
    rivals = arm_registry.get(arm).compare_with if arm in arm_registry.names() else ()
    ran = [other for other in rivals if other in cfg.generations.arms]
    rival, others = (ran[0] if ran else None), ran[1:]
    plan_points = plan.points()
    reference = plan_points[plan.reference]
    points = [PointSummary(p.name, p.settings, False, _point_results(out, p.name)) for p in plan_points]
    ref_values = points[plan.reference].results.values(SPLIT).get(cell, {})
    for point in points:
        point.complete = point.results.complete
        top1 = point.results.values(SPLIT)
        point.score = top1.get(cell, {})
        point.patriarch_train_top1 = mean_of(point.results.values("train").get((arm, 0, "single"), {}))
        if point.score:
            point.score_nll = mean_of(point.results.values(SPLIT, "nll").get(cell, {}))
            point.vs_reference = paired(point.score, ref_values) if point.name != reference.name else None
            if rival is not None:
                point.vs_rival = paired(point.score, top1.get((rival, generation, kind), {}))
            point.vs_others = {other: paired(point.score, top1.get((other, generation, kind), {})) for other in others}
    scored = [p for p in points if p.complete and p.score]
    best = max(scored, key=lambda p: (p.score_mean, -p.score_nll)) if scored else None
    best_plan = next((p for p in plan_points if best is not None and p.name == best.name), None)
    return SweepSummary(arm, generation, kind, rival, others, plan_json["grid"], reference.name, points, best,
                        plan.test_command(best_plan) if best_plan is not None else None)


def _shown(value: Any) -> str:
    """A grid value as the page shows it: a whole section by its label (``tsd-eta0.74``), anything else as written."""
    return label_value(value) if isinstance(value, dict) else str(value)


def _values(values: list) -> str:
    return "[" + ", ".join(_shown(v) for v in values) + "]"


def _diff(d: Paired | None) -> str:
    if d is None:
        return "–"
    if d.identical:
        return f"{difference(d.mean, d.std)} (identical on every seed)"
    if d.no_spread:  # the same difference on every seed: no t-test, the exact sign test instead
        return f"{difference(d.mean, d.std)} (same on every seed, sign test p {p_value(d.sign_p)})"
    return f"{difference(d.mean, d.std)} (p {p_value(d.p)})"


def build_sweep_report(out: Path) -> Path:
    """Write ``sweep.md``, ``sweep.html``, ``sweep_summary.json`` and ``plots/`` for the sweep in ``out``."""
    from kdgen.reporting.plots import sweep_plot

    out = Path(out)
    summary = sweep_summary(out)
    arm, last, rival = summary.arm, summary.generation, summary.rival
    axes = [k for k, _ in summary.grid]
    keys = [key for axis in axes for key in axis_keys(axis)]
    done = sum(p.complete for p in summary.points)
    seeds = max((c.n for p in summary.points for c in p.results.cells_in(SPLIT)), default=0)
    what = f"{arm} generation {last}" + (" ensemble" if summary.kind == "ensemble" else "")
    rivals = " and ".join(f"the {other} arm's" for other in [rival, *summary.others] if other is not None)
    versus = (f", and against {rivals} generation {last} at the same point." if rival is not None
              else f" ({arm} has no rival arm in this sweep).")
    intro = [f"Grid: {'; '.join(f'`{k}` ∈ {_values(v)}' for k, v in summary.grid)} — {done} of {len(summary.points)} "
             f"points complete. Scored on the **val split only**; mean ± std over seeds (n up to {seeds}).",
             f"Score: val top-1 of {what}. Paired differences pair seeds: against the reference point "
             f"`{summary.reference}`" + versus,
             "Units shared between points (the baseline and strict arms in a tolerance sweep) were trained once."]
    if summary.best is not None:
        best = summary.best
        intro.append(f"**Best point on val: `{best.name}`** ({', '.join(f'{k}={_shown(v)}' for k, v in best.settings.items())}), "
                     f"val top-1 {best.score_mean:.2f}. Evaluate it on test, once: `{summary.test_command}`")
    gens = range(0, last + 1)
    header = ["point", *keys] + [f"{arm} g{g} top1" for g in gens] + \
             [f"{arm} g0 conf", f"{arm} g0 train top1", "Δ vs reference"] + ([f"Δ vs {rival}"] if rival else []) + \
             [f"Δ vs {other}" for other in summary.others]
    body = []
    for p in summary.points:
        state = "" if p.complete else " (running)" if (out / "runs" / p.name).is_dir() else " (not run yet)"
        line = [p.name + state] + [_shown(p.settings[k]) for k in keys]
        line += [format_cell(p.results.cell(SPLIT, arm, g), "top1") for g in gens]
        train = p.patriarch_train_top1
        line += [format_cell(p.results.cell(SPLIT, arm, 0), "conf"), "–" if math.isnan(train) else f"{train:.2f}",
                 _diff(p.vs_reference)] + ([_diff(p.vs_rival)] if rival else []) + \
            [_diff(p.vs_others.get(other)) for other in summary.others]
        body.append(line)
    long_header = ["point", "arm", "gen", "kind", "n"] + list(SHOWN)
    long_body = []
    for p in summary.points:
        for c in sorted(p.results.cells_in(SPLIT),
                        key=lambda c: (*arm_registry.sort_key(c.arm), c.generation, c.kind != "single")):
            long_body.append([p.name, c.arm, str(c.generation), c.kind, str(c.n)] + [c.format(m) for m in SHOWN])
    plots = [sweep_plot(summary, key, out / "plots" / f"sweep_{key.replace('.', '_').replace(',', '+')}.png") for key in axes]
    plots = [p for p in plots if p is not None]
    tables = [("Grid points (val split)", header, body), ("Every arm and generation (val split)", long_header, long_body)]
    md = ["# kdgen sweep", "", *intro, ""]
    for title, h, b in tables:
        md += [f"## {title}", "", markdown_table(h, b), ""]
    md += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    write_text(out / "sweep.md", "\n".join(md))
    write_json(out / "sweep_summary.json", summary.to_json())
    write_html(out / "sweep.html", "kdgen sweep", intro, tables, plots)
    return out / "sweep.md"
