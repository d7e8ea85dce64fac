"""The report's tables, each a function of a run's :class:`~kdgen.reporting.results.Results` and a split.

A table is ``(header, body)``: lists of strings, rendered to markdown, HTML or plain text by
:mod:`kdgen.reporting.formatting` and :mod:`kdgen.reporting.page`. Comparisons come from the arms recorded in the
run (:meth:`~kdgen.reporting.results.Results.comparisons`), metrics from :data:`~kdgen.reporting.results.METRICS`.
"""

from __future__ import annotations

import math

from kdgen import arms as arm_registry
from kdgen.reporting.formatting import difference, p_value, signed, text_table
from kdgen.reporting.results import METRICS, Results, format_cell
from kdgen.reporting.statistics import Paired, mean_interval, paired, slope

Table = tuple[list[str], list[list[str]]]


def p_cell(d: Paired) -> str:
    """The paired t-test's p; where every seed gives the same difference (no t-test), the exact sign test's p
    marked ``(sign test)``, or ``identical`` for no difference on any seed."""
    if d.identical:
        return "identical"
    if d.no_spread:
        return f"{p_value(d.sign_p)} (sign test)"
    return p_value(d.p)


def detectable_cell(d: Paired) -> str:
    """``±0.42``: the difference these seeds detect with 80 % power; ``– (no spread)`` where it is undefined
    because every seed gives the same difference; ``–`` below two seeds."""
    if d.no_spread:
        return "– (no spread)"
    return "–" if math.isnan(d.detectable) else f"±{d.detectable:.2f}"


def _arm_generations(results: Results, split: str) -> list[tuple[str, int]]:
    """(arm, generation) of every cell on ``split``, in report order."""
    return sorted({(c.arm, c.generation) for c in results.cells_in(split)},
                  key=lambda k: (arm_registry.sort_key(k[0]), k[1]))


def summary_table(results: Results, split: str) -> Table:
    """One line per arm × generation: top-1 of single models and ensembles side by side, then calibration."""
    cells = results.cells_in(split)
    has_top5 = any(c.has("top5") for c in cells)
    has_conf = any(c.has("conf") for c in cells)
    header = ["arm", "gen", "n", "top1 single", "top1 ensemble"] + (["top5 single"] if has_top5 else []) + \
             ["NLL single", "ECE single", "NLL ensemble"] + (["confidence single"] if has_conf else [])
    body = []
    for arm, gen in _arm_generations(results, split):
        single, ensemble = results.cell(split, arm, gen, "single"), results.cell(split, arm, gen, "ensemble")
        line = [arm, str(gen), str(single.n if single else 0), format_cell(single, "top1"), format_cell(ensemble, "top1")]
        if has_top5:
            line.append(format_cell(single, "top5"))
        line += [format_cell(single, "nll"), format_cell(single, "ece"), format_cell(ensemble, "nll")]
        if has_conf:
            line.append(format_cell(single, "conf"))
        body.append(line)
    return header, body


def diff_table(results: Results, split: str) -> Table:
    """Arm against arm at the same generation, paired by seed (ensembles against ensembles): top-1 and NLL."""
    header = ["comparison", "gen", "n", "Δ top1 (points)", "p (paired t)", "detectable (80 %)", "Δ NLL", "p (NLL)"]
    body = []
    for arm, other, kind in results.comparisons():
        label = f"{arm} − {other}" + (" (ensemble)" if kind == "ensemble" else "")
        nll = results.paired(arm, other, split, kind, "nll")
        for generation, d in results.paired(arm, other, split, kind).items():
            line = [label, str(generation), str(d.n), difference(d.mean, d.std), p_cell(d), detectable_cell(d)]
            e = nll.get(generation)
            line += ["–", "–"] if e is None else [difference(e.mean, e.std, 3), p_cell(e)]
            body.append(line)
    return header, body


def gains_table(results: Results, split: str) -> Table:
    """Does a generation pay? Each student (and ensemble) of an arm against the same arm's patriarch, paired by seed."""
    header = ["arm", "gen", "n", "Δ top1 single − patriarch", "p", "Δ top1 ensemble − patriarch", "p "]
    values = results.values(split)
    body = []
    for arm, generation in sorted({(a, g) for (a, g, _) in values if g >= 1},
                                  key=lambda k: (arm_registry.sort_key(k[0]), k[1])):
        patriarch = values.get((arm, 0, "single"), {})
        single = paired(values.get((arm, generation, "single"), {}), patriarch)
        if single is None:
            continue
        ensemble = paired(values.get((arm, generation, "ensemble"), {}), patriarch)
        line = [arm, str(generation), str(single.n)]
        for d in (single, ensemble):
            line += ["–", "–"] if d is None else [difference(d.mean, d.std), p_cell(d)]
        body.append(line)
    return header, body


def seed_slopes(results: Results, split: str, metric: str, first: int = 2) -> dict[str, dict[int, float]]:
    """``{arm: {seed: slope}}``: the least-squares slope of a single model's ``metric`` against generation,
    generations ``first``..last, per seed (arms with at least three such generations)."""
    values = results.values(split, metric)
    slopes: dict[str, dict[int, float]] = {}
    for arm in results.arms:
        generations = sorted(g for (a, g, k) in values if a == arm and k == "single" and g >= first)
        if len(generations) < 3:
            continue
        for seed in sorted(set.intersection(*(set(values[(arm, g, "single")]) for g in generations))):
            slopes.setdefault(arm, {})[seed] = slope(generations, [values[(arm, g, "single")][seed] for g in generations])
    return slopes


def trend_table(results: Results, split: str, first: int = 2) -> Table:
    """Does an arm keep improving or saturate? Per arm, the slope of top-1 (points per generation) and of
    confidence against generation from generation ``first`` on, fitted per seed; mean over seeds, its 95 %
    interval and p (slope = 0); and each compared pair's slope difference, paired by seed."""
    header = ["arm", "generations", "n", "top-1 slope (points/gen)", "95 % CI", "p", "confidence slope (/gen)", "p "]
    top1, conf = seed_slopes(results, split, "top1", first), seed_slopes(results, split, "conf", first)
    last = results.last_generation()

    def line(label: str, a: list[float], c: list[float]) -> list[str]:
        mean, low, high, p = mean_interval(a)
        cmean, _, _, cp = mean_interval(c) if c else (math.nan,) * 4
        interval = "–" if math.isnan(low) else f"[{signed(low)}, {signed(high)}]"
        return [label, f"{first}..{last}", str(len(a)), signed(mean), interval, p_value(p),
                "–" if math.isnan(cmean) else signed(cmean, 4), p_value(cp)]

    body = [line(arm, list(by_seed.values()), list(conf.get(arm, {}).values())) for arm, by_seed in top1.items()]
    for arm, other, kind in results.comparisons():
        if kind != "single" or arm not in top1 or other not in top1:
            continue
        seeds = sorted(set(top1[arm]) & set(top1[other]))
        cseeds = sorted(set(conf.get(arm, {})) & set(conf.get(other, {})))
        body.append(line(f"{arm} − {other}", [top1[arm][s] - top1[other][s] for s in seeds],
                         [conf[arm][s] - conf[other][s] for s in cseeds]))
    return header, body


def secondary_table(results: Results, split: str) -> Table:
    """Convergence (train-split top-1 and NLL) and what every model says beyond its top-1 choice."""
    singles = [c for c in results.cells if c.kind == "single"]
    shown = [m for m in METRICS if m.secondary and any(c.has(m.name) for c in singles)]
    header = ["arm", "gen", "train top1", "train NLL"] + [m.label for m in shown]
    body = []
    for arm, gen in _arm_generations(results, split):
        here = results.cell(split, arm, gen)
        if here is None:
            continue
        train = results.cell("train", arm, gen)
        body.append([arm, str(gen), format_cell(train, "top1"), format_cell(train, "nll")] + [format_cell(here, m.name) for m in shown])
    return header, body


def console_summary(results: Results) -> str:
    """The test-split summary and the arms' paired differences, as plain text for the terminal."""
    parts = ["test split (mean ± std over seeds; top1 in %):", text_table(*summary_table(results, "test"))]
    header, body = diff_table(results, "test")
    if body:
        parts += ["", text_table(header, body)]
    return "\n".join(parts)
