"""Summaries of results.json: mean ± std over seeds, paired tolerant − strict tests, report files.

Everything here is a function of the tidy rows, so ``kdgen report DIR`` can rebuild the report
of a finished or partial run at any time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import stats

from kdgen import arms as arm_registry
from kdgen.checkpoint import read_json
from kdgen.errors import CheckpointError
from kdgen.run_folder import RESULTS_FILE, Row, checkpoint_relpath
from kdgen.formatting import p_value, signed

METRICS = ("top1", "top5", "nll", "ece", "conf", "entropy", "secondary_mass", "semantic", "semantic_mass")


def summarize(rows: Iterable[Row]) -> list[dict[str, object]]:
    """Mean, std (ddof=1) and count over seeds for every (split, kind, arm, generation) and metric."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row["split"], row["kind"], row["arm"], row["generation"])].append(row)
    summary = []
    for (split, kind, arm, generation), members in groups.items():
        entry: dict[str, object] = {"split": split, "kind": kind, "arm": arm, "generation": generation, "n": len(members)}
        for metric in METRICS:
            values = np.array([m[metric] for m in members if metric in m], dtype=float)
            if len(values):
                entry[f"{metric}_mean"] = float(values.mean())
                entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    summary.sort(key=lambda e: (e["split"], e["kind"], arm_registry.sort_key(str(e["arm"])), e["generation"]))
    return summary


def paired_differences(rows: Iterable[Row], arm_a: str = "tolerant", arm_b: str = "strict", *, split: str = "test",
                       kind: str = "single", metric: str = "top1") -> list[dict[str, object]]:
    """``arm_a - arm_b`` per generation, paired by seed, with a two-sided paired t-test.

    ``p`` is NaN with fewer than two seeds (or when every difference is identical).
    """
    values = values_by_cell(rows, split, metric)
    generations = sorted({g for (arm, g, k) in values if arm == arm_a and k == kind}
                         & {g for (arm, g, k) in values if arm == arm_b and k == kind})
    result = []
    for generation in generations:
        stats_ = paired_stats(values[(arm_a, generation, kind)], values[(arm_b, generation, kind)])
        if stats_ is not None:
            result.append({"generation": generation, **stats_})
    return result


def values_by_cell(rows: Iterable[Row], split: str, metric: str = "top1") -> dict[tuple[str, int, str], dict[int, float]]:
    """``{(arm, generation, kind): {seed: value}}`` of ``metric`` on ``split``: what paired tests pair."""
    values: dict[tuple[str, int, str], dict[int, float]] = defaultdict(dict)
    for row in rows:
        if row["split"] == split and metric in row:
            cell = (str(row["arm"]), int(row["generation"]), str(row["kind"]))  # type: ignore[arg-type]
            values[cell][int(row["seed"])] = float(row[metric])  # type: ignore[arg-type]
    return values


def paired_stats(a: dict[int, float], b: dict[int, float]) -> dict[str, float] | None:
    """``a - b`` over the seeds both have: n, mean, sample std and a two-sided paired t-test's p.

    None without a common seed; ``p`` is NaN below two seeds or when every difference is identical
    (the t statistic is undefined).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = np.array([a[s] - b[s] for s in seeds])
    p_value = float("nan")
    if len(seeds) >= 2 and np.ptp(diffs) > 1e-9:
        p_value = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return {"n": len(seeds), "mean": float(diffs.mean()), "std": float(diffs.std(ddof=1)) if len(seeds) > 1 else 0.0,
            "p": p_value}


def t_half_width(std: float, n: int, alpha: float = 0.05) -> float:
    """Half the width of the two-sided (1 − alpha) t interval of a mean over ``n`` values with sample std ``std``."""
    return float(stats.t.ppf(1 - alpha / 2, n - 1) * std / math.sqrt(n))


def detectable_effect(std: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference a two-sided paired t-test over ``n`` seeds detects with probability
    ``power`` at level ``alpha``, given the differences' sample std: ``(t_(1-alpha/2) + t_power) * std / sqrt(n)``
    with n − 1 degrees of freedom (NaN below two seeds). What a null result with these seeds can rule out."""
    if n < 2 or not math.isfinite(std):
        return float("nan")
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * std / math.sqrt(n))


def best_unit(rows: Iterable[Row]) -> dict[str, object] | None:
    """The single model to keep, chosen on the *val* split only.

    First the (arm, generation) with the highest mean val top-1 over seeds, then its seed with the
    highest val top-1 (ties: lower NLL).
    """
    val_rows = [r for r in rows if r["split"] == "val" and r["kind"] == "single"]
    if not val_rows:
        return None
    means = {(e["arm"], e["generation"]): (e["top1_mean"], -e["nll_mean"]) for e in summarize(val_rows)}
    arm, generation = max(means, key=lambda key: means[key])
    candidates = [r for r in val_rows if r["arm"] == arm and r["generation"] == generation]
    chosen = max(candidates, key=lambda r: (r["top1"], -float(r["nll"])))  # type: ignore[arg-type]
    return {"arm": arm, "generation": generation, "seed": chosen["seed"], "val_top1": chosen["top1"],
            "checkpoint": checkpoint_relpath(str(arm), int(chosen["seed"]), int(generation))}


def format_cell(entry: dict[str, object] | None, metric: str, digits: int = 2) -> str:
    """``mean ± std`` of ``metric`` in a :func:`summarize` entry, or "–" when it has none."""
    if entry is None or f"{metric}_mean" not in entry:
        return "–"
    mean, std = float(entry[f"{metric}_mean"]), float(entry[f"{metric}_std"])  # type: ignore[arg-type]
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(summary: list[dict[str, object]], split: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one line per arm × generation, single and ensemble side by side."""
    index = {(e["kind"], e["arm"], e["generation"]): e for e in summary if e["split"] == split}
    has_top5 = any("top5_mean" in e for e in index.values())
    has_conf = any("conf_mean" in e for e in index.values())
    header = ["arm", "gen", "n", "top1 single", "top1 ensemble"] + (["top5 single"] if has_top5 else []) + \
             ["NLL single", "ECE single", "NLL ensemble"] + (["confidence single"] if has_conf else [])
    keys = sorted({(arm, gen) for (_, arm, gen) in index}, key=lambda k: (arm_registry.sort_key(str(k[0])), k[1]))
    body = []
    for arm, gen in keys:
        single, ensemble = index.get(("single", arm, gen)), index.get(("ensemble", arm, gen))
        line = [str(arm), str(gen), str(single["n"] if single else 0), format_cell(single, "top1"), format_cell(ensemble, "top1")]
        if has_top5:
            line.append(format_cell(single, "top5"))
        line += [format_cell(single, "nll", 3), format_cell(single, "ece", 3), format_cell(ensemble, "nll", 3)]
        if has_conf:
            line.append(format_cell(single, "conf", 3))
        body.append(line)
    return header, body


def comparisons(arms_run: Iterable[str]) -> list[tuple[str, str, str]]:
    """(arm, other, kind) for every comparison an arm asks for (``compare_with``) whose arms both ran;
    the most derived arms first (tolerant − strict before strict − baseline)."""
    present = set(arms_run)
    found = []
    for arm in sorted(present & set(arm_registry.names()), key=arm_registry.sort_key, reverse=True):
        for other in arm_registry.get(arm).compare_with:
            if other in present:
                found += [(arm, other, "single"), (arm, other, "ensemble")]
    return found


def diff_table(rows: list[Row], split: str) -> tuple[list[str], list[list[str]]]:
    """Arm against arm at the same generation, paired by seed (ensembles against ensembles): top-1 and NLL."""
    header = ["comparison", "gen", "n", "Δ top1 (points)", "p (paired t)", "detectable (80 %)", "Δ NLL", "p (NLL)"]
    body = []
    for arm_a, arm_b, kind in comparisons({str(r["arm"]) for r in rows}):
        label = f"{arm_a} − {arm_b}" + (" (ensemble)" if kind == "ensemble" else "")
        nll = {d["generation"]: d for d in paired_differences(rows, arm_a, arm_b, split=split, kind=kind, metric="nll")}
        for d in paired_differences(rows, arm_a, arm_b, split=split, kind=kind):
            detectable = detectable_effect(float(d["std"]), int(d["n"]))
            line = [label, str(d["generation"]), str(d["n"]), f"{signed(float(d['mean']))} ± {float(d['std']):.2f}",
                    p_value(float(d["p"])), "–" if math.isnan(detectable) else f"±{detectable:.2f}"]
            e = nll.get(d["generation"])
            line += ["–", "–"] if e is None else [f"{float(e['mean']):+.3f} ± {float(e['std']):.3f}", p_value(float(e["p"]))]
            body.append(line)
    return header, body


def gains_table(rows: list[Row], split: str) -> tuple[list[str], list[list[str]]]:
    """Does a generation pay? Each student (and ensemble) of an arm against the same arm's patriarch, paired by seed."""
    header = ["arm", "gen", "n", "Δ top1 single − patriarch", "p", "Δ top1 ensemble − patriarch", "p "]
    values = values_by_cell(rows, split)
    body = []
    cells = {(a, g) for (a, g, _) in values if g >= 1}
    for arm, generation in sorted(cells, key=lambda k: (arm_registry.sort_key(k[0]), k[1])):
        patriarch = values.get((arm, 0, "single"), {})
        line = [arm, str(generation)]
        single = paired_stats(values[(arm, generation, "single")], patriarch)
        ensemble = paired_stats(values.get((arm, generation, "ensemble"), {}), patriarch)
        if single is None:
            continue
        line.append(str(single["n"]))
        for d in (single, ensemble):
            line += ["–", "–"] if d is None else [f"{signed(d['mean'])} ± {d['std']:.2f}", p_value(d["p"])]
        body.append(line)
    return header, body


def seed_slopes(rows: Iterable[Row], split: str, metric: str, first: int = 2) -> dict[str, dict[int, float]]:
    """``{arm: {seed: slope}}``: the least-squares slope of a single model's ``metric`` against generation,
    generations ``first``..last, per seed (arms with at least three such generations)."""
    values = values_by_cell(rows, split, metric)
    slopes: dict[str, dict[int, float]] = {}
    for arm in sorted({a for (a, _, k) in values if k == "single"}, key=arm_registry.sort_key):
        generations = sorted(g for (a, g, k) in values if a == arm and k == "single" and g >= first)
        if len(generations) < 3:
            continue
        for seed in sorted(set.intersection(*(set(values[(arm, g, "single")]) for g in generations))):
            ys = [values[(arm, g, "single")][seed] for g in generations]
            slopes.setdefault(arm, {})[seed] = float(np.polyfit(generations, ys, 1)[0])
    return slopes


def _mean_ci(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, 95 % t interval (low, high) and the one-sample t-test's p against 0."""
    data = np.array(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2 or np.ptp(data) < 1e-12:
        return mean, float("nan"), float("nan"), float("nan")
    half = t_half_width(float(data.std(ddof=1)), len(data))
    return mean, mean - half, mean + half, float(stats.ttest_1samp(data, 0.0).pvalue)


def trend_table(rows: list[Row], split: str, first: int = 2) -> tuple[list[str], list[list[str]]]:
    """Does an arm keep improving or saturate? Per arm, the slope of top-1 (points per generation) and of
    confidence against generation from generation ``first`` on, fitted per seed; mean over seeds, its 95 %
    interval and p (slope = 0); and each compared pair's slope difference, paired by seed."""
    header = ["arm", "generations", "n", "top-1 slope (points/gen)", "95 % CI", "p", "confidence slope (/gen)", "p "]
    top1, conf = seed_slopes(rows, split, "top1", first), seed_slopes(rows, split, "conf", first)
    last = max((int(r["generation"]) for r in rows), default=0)  # type: ignore[arg-type]
    body = []

    def line(label: str, a: list[float], c: list[float]) -> list[str]:
        mean, low, high, p = _mean_ci(a)
        cmean, _, _, cp = _mean_ci(c) if c else (float("nan"),) * 4
        interval = "–" if math.isnan(low) else f"[{signed(low)}, {signed(high)}]"
        return [label, f"{first}..{last}", str(len(a)), signed(mean), interval, p_value(p),
                "–" if math.isnan(cmean) else f"{cmean:+.4f}", p_value(cp)]

    for arm, by_seed in top1.items():
        body.append(line(arm, list(by_seed.values()), list(conf.get(arm, {}).values())))
    for arm, other, kind in comparisons(top1):
        if kind != "single" or other not in top1:
            continue
        seeds = sorted(set(top1[arm]) & set(top1[other]))
        cseeds = sorted(set(conf.get(arm, {})) & set(conf.get(other, {})))
        body.append(line(f"{arm} − {other}", [top1[arm][s] - top1[other][s] for s in seeds],
                         [conf[arm][s] - conf[other][s] for s in cseeds]))
    return header, body


SECONDARY = (("conf", "confidence", 3), ("entropy", "entropy", 3), ("secondary_mass", "mass ranks 2..K", 3),
             ("semantic", "semantic 2nd choice %", 1), ("semantic_mass", "semantic mass", 3))


def secondary_table(summary: list[dict[str, object]], split: str) -> tuple[list[str], list[list[str]]]:
    """Convergence (train-split top-1 and NLL) and what every model says beyond its top-1 choice."""
    index = {(e["split"], e["arm"], e["generation"]): e for e in summary if e["kind"] == "single"}
    shown = [(m, label, d) for m, label, d in SECONDARY if any(f"{m}_mean" in e for e in index.values())]
    header = ["arm", "gen", "train top1", "train NLL"] + [label for _, label, _ in shown]
    keys = sorted({(a, g) for (sp, a, g) in index if sp == split},
                  key=lambda k: (arm_registry.sort_key(str(k[0])), k[1]))
    body = []
    for arm, gen in keys:
        train, here = index.get(("train", arm, gen)), index[(split, arm, gen)]
        body.append([str(arm), str(gen), format_cell(train, "top1"), format_cell(train, "nll", 3)] +
                    [format_cell(here, m, d) for m, _, d in shown])
    return header, body


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*line) for line in body])


def console_summary(rows: list[Row]) -> str:
    """The test-split summary and tolerant − strict differences, as plain text for the terminal."""
    summary = summarize(rows)
    parts = []
    for split in ("test",):
        parts.append(f"{split} split (mean ± std over seeds; top1 in %):")
        parts.append(text_table(*summary_table(summary, split)))
        header, body = diff_table(rows, split)
        if body:
            parts.append("")
            parts.append(text_table(header, body))
    return "\n".join(parts)


def load_rows(run_dir: Path) -> list[Row]:
    """Rows of ``run_dir/results.json``; a missing or malformed file is a :class:`CheckpointError`."""
    path = Path(run_dir) / RESULTS_FILE
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: not a run directory")
    payload = read_json(path)
    rows = payload.get("rows") if isinstance(payload, dict) else None
    required = {"arm", "generation", "kind", "seed", "split", "top1", "nll", "ece"}
    if not isinstance(rows, list) or any(not isinstance(r, dict) or not required <= set(r) for r in rows):
        raise CheckpointError(f"{path}: not a kdgen results file (expected {{\"rows\": [...]}} with {sorted(required)})")
    return rows


def load_extras(run_dir: Path) -> dict[str, dict]:
    """Per-unit extras of ``run_dir/results.json`` (the patriarchs' soft confusion matrices); {} if none."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return {}
    payload = read_json(path)
    extras = payload.get("extras") if isinstance(payload, dict) else None
    return extras if isinstance(extras, dict) else {}
