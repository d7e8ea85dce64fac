"""Report plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kdgen.arms import color as arm_color
from kdgen.arms import sort_key as arm_sort_key
from kdgen.checkpoint import atomic_write

if TYPE_CHECKING:
    from kdgen.reporting.equal_cost import CostPoint
    from kdgen.reporting.results import Cell
    from kdgen.sweep_plan import PointSummary, SweepSummary


def _series(cells: "list[Cell]", split: str, kind: str, arm: str, metric: str) -> tuple[list, list, list]:
    """Generations, means and stds of ``metric`` for one arm and kind, in generation order."""
    points = sorted((c.generation, c.means[metric], c.stds[metric]) for c in cells
                    if (c.split, c.kind, c.arm) == (split, kind, arm) and c.has(metric))
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def _save(fig: "plt.Figure", path: Path) -> Path:
    """Lay out, write ``path`` (making its folder) and free the figure."""
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path


def _draw_arm_series(ax: "plt.Axes", series: list[tuple[str, str, list, list, list]]) -> None:
    """One line per (arm, kind, x, y, err): single models solid, ensembles dashed, ± std bars, arm colours."""
    for arm, kind, x, y, err in series:
        if x:
            ax.errorbar(x, y, yerr=err, fmt="-o" if kind == "single" else "--s", color=arm_color(arm), capsize=3,
                        markersize=4, label=f"{arm} ({kind})", alpha=0.9 if kind == "single" else 0.7)


def _summary_series(cells: "list[Cell]", split: str, metric: str) -> list[tuple[str, str, list, list, list]]:
    """(arm, kind, generations, means, stds) of ``metric`` for every arm, single models and ensembles."""
    arms = sorted({c.arm for c in cells}, key=arm_sort_key)
    return [(arm, kind, *_series(cells, split, kind, arm, metric)) for arm in arms for kind in ("single", "ensemble")]


def _arm_lines(series: list[tuple[str, str, list, list, list]], path: Path, *, xlabel: str, ylabel: str, title: str,
               integer_x: bool = False, log_x: bool = False, models: list[str] | None = None) -> Path:
    """One line per (arm, kind, x, y, err): single models solid, ensembles dashed, ± std bars, arm colours.
    ``models``: each generation's architecture, shown under its tick (a chain that changes architecture)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    _draw_arm_series(ax, series)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if integer_x:
        _generation_ticks(ax, models)
    if log_x:  # costs double from point to point: equal spacing, every measured x labelled
        ticks = sorted({float(x) for _, _, xs, _, _ in series for x in xs})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def _generation_ticks(ax: "plt.Axes", models: list[str] | None) -> None:
    """Integer generation ticks; with ``models``, each generation's architecture under its number."""
    if models:
        ax.set_xticks(range(len(models)), [f"{g}\n{name}" for g, name in enumerate(models)], fontsize=8)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def metric_plot(cells: "list[Cell]", split: str, metric: str, path: Path, ylabel: str,
                models: list[str] | None = None) -> Path:
    """``metric`` against generation for every arm: single models solid, ensembles dashed, ± std bars."""
    return _arm_lines(_summary_series(cells, split, metric), path, xlabel="generation (0 = patriarch; ensemble = generations 1..g)", ylabel=ylabel,
                      title=f"{ylabel} on the {split} split (mean ± std over seeds)", integer_x=True, models=models)


def accuracy_confidence_plot(cells: "list[Cell]", split: str, path: Path, models: list[str] | None = None) -> Path:
    """The paper's mechanism, side by side per arm: single-model top-1 and mean confidence (top-1
    probability) against generation. Do strict generations grow confident again while tolerant ones stay
    tolerant, and does accuracy follow?"""
    arms = sorted({c.arm for c in cells}, key=arm_sort_key)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.0), dpi=110)
    for ax, metric, label in ((axes[0], "top1", "top-1 accuracy (%)"), (axes[1], "conf", "confidence (mean top-1 prob.)")):
        _draw_arm_series(ax, [(arm, "single", *_series(cells, split, "single", arm, metric)) for arm in arms])
        ax.set_xlabel("generation (0 = patriarch)")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, single models, {split} split", fontsize=10)
        _generation_ticks(ax, models)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy and confidence per generation (mean ± std over seeds)", fontsize=10)
    return _save(fig, path)


def _axis_value(point: "PointSummary", keys: list[str]) -> object:
    """A grid point's value on an axis: the key's value, or a tuple for linked keys; hashable (a list value as a
    tuple, a whole section such as ``tolerance={method: tsd, eta: 0.74}`` as its label ``tsd-eta0.74``)."""
    from kdgen.sweep_plan import label_value

    def hashable(value: object) -> object:
        if isinstance(value, dict):
            return label_value(value)
        return tuple(hashable(v) for v in value) if isinstance(value, list) else value

    return hashable(point.settings[keys[0]]) if len(keys) == 1 else tuple(hashable(point.settings[k]) for k in keys)


def _slice(summary: "SweepSummary", axis: str, free: str | None = None) -> "list[PointSummary]":
    """The grid points along ``axis`` (and ``free``, when given) with every other axis at the best (else the
    first) point's value."""
    from kdgen.sweep_plan import axis_keys

    anchor = summary.best_settings or summary.points[0].settings
    moving = set(axis_keys(axis)) | set(axis_keys(free) if free else [])
    return [p for p in summary.points if all(p.settings[k] == v for k, v in anchor.items() if k not in moving)]


def _cell_series(points: "list[PointSummary]", arm: str, generation: int, metric: str) -> tuple[list, list, list]:
    """Indices (into ``points``), val means and stds of a single-model cell's ``metric`` across grid points."""
    xs, ys, errs = [], [], []
    for index, point in enumerate(points):
        cell = point.results.cell("val", arm, generation)
        if cell is not None and cell.has(metric):
            xs.append(index)
            ys.append(cell.means[metric])
            errs.append(cell.stds[metric])
    return xs, ys, errs


def _spans_decades(values: list) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) >= 2 and max(positive) / min(positive) >= 10


# Short names for legends and ticks of the usual swept keys.
SHORT = {"temperature": "T", "weight": "w", "eta": "η", "epsilon": "ε", "beta": "β", "confidence": "c"}


def _short(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return SHORT.get(leaf, leaf)


def _axis_label(keys: list[str], value: object) -> str:
    if len(keys) == 1:
        return str(value)
    return ", ".join(f"{_short(k)} {v}" for k, v in zip(keys, value))  # type: ignore[call-overload]


def _section_tick(section: dict) -> str:
    """A whole section as a tick: its method, and its settings on a second line (``tsd`` / ``eta 0.74, k 3``)."""
    rest = ", ".join(f"{_short(k)} {v}" for k, v in section.items() if k != "method")
    return f"{section.get('method', '')}\n{rest}" if rest else str(section.get("method", ""))


def sweep_plot(summary: "SweepSummary", key: str, path: Path) -> Path | None:
    """Val top-1 of the selected arm (and of its rival arm, dashed) against grid axis ``key``, and the
    patriarch's confidence. With one axis: a line per generation, through the best point. With a second
    axis of several values (e.g. the students' temperature): a line per value of it, for the scored
    generation. None when no point has results yet."""
    from kdgen.sweep_plan import axis_keys

    keys = axis_keys(key)
    second = next((k for k, values in summary.grid if k != key and len(values) > 1), None)
    points = _slice(summary, key, second)
    if not any(point.results.cells for point in points):
        return None
    arm, last, rival = summary.arm, summary.generation, summary.rival
    values = list(dict.fromkeys(_axis_value(entry, keys) for entry in points))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    def position(members: list[dict], xs: list[int]) -> list:
        at = [values.index(_axis_value(members[i], keys)) for i in xs]
        return [values[i] for i in at] if numeric else at

    # (label, colour, members, generations): one line group per generation, or per value of the second axis
    palette = plt.get_cmap("tab10")
    if second is None:
        groups = [(f"gen {g}", palette(g % 10), points, [g]) for g in range(last + 1)]
    else:
        second_keys = axis_keys(second)
        second_values = list(dict.fromkeys(_axis_value(e, second_keys) for e in points))
        groups = [(_axis_label(second_keys, v) if len(second_keys) > 1 else f"{_short(second)} {v}",
                   palette(i % 10), [e for e in points if _axis_value(e, second_keys) == v], [last])
                  for i, v in enumerate(second_values)]
    fig, (left, zoom, right) = plt.subplots(1, 3, figsize=(15.0, 4.2), dpi=110)
    reference: list[float] = []  # the rival arm's values (or the scored arm's last generation)
    zoomed_on = f"the {rival} arm"
    for label, color, members, generations in groups:
        for generation in generations:
            name = label if second is None else f"gen {generation}, {label}"
            xs, ys, errs = _cell_series(members, arm, generation, "top1")
            for ax in (left, zoom):
                if xs:
                    ax.errorbar(position(members, xs), ys, yerr=errs, fmt="-o", color=color, capsize=3, markersize=4,
                                label=f"{arm} {name}" + (" (patriarch)" if generation == 0 else ""))
            if rival is not None:
                sx, sy, _ = _cell_series(members, rival, generation, "top1")
                reference += sy
                for ax in (left, zoom):
                    if sx:
                        ax.plot(position(members, sx), sy, "--", color=color, alpha=0.6, label=f"{rival} {name}")
            if generation == last and not reference:
                reference += ys
                zoomed_on = f"{arm} gen {last}"
    if reference:
        # Strong settings can collapse a model; the zoom keeps the region where the arms compete readable.
        zoom.set_ylim(min(reference) - 2.5, max(reference) + 1.5)
    patriarchs = groups[0][2]  # a patriarch does not depend on the students' settings
    for metric, style, label in (("conf", "-o", "confidence (mean top-1 prob.)"),
                                 ("secondary_mass", "-s", "mass on ranks 2..K")):
        xs, ys, errs = _cell_series(patriarchs, arm, 0, metric)
        if xs:
            right.errorbar(position(patriarchs, xs), ys, yerr=errs, fmt=style, capsize=3, markersize=4,
                           label=f"patriarch {label}")
    for ax, title in ((left, "val top-1 (%)"), (zoom, f"val top-1 (%), zoomed on {zoomed_on}"),
                      (right, "patriarch's secondary information (val)")):
        ax.set_xlabel(key)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax is not zoom:
            ax.legend(fontsize=7 if second is None else 6.5, ncol=2 if ax is left else 1, loc="best")
        if not numeric:
            sections = {_axis_value(e, keys): e.settings[keys[0]] for e in points if len(keys) == 1}
            labels = [_section_tick(sections[v]) if isinstance(sections.get(v), dict) else _axis_label(keys, v)
                      for v in values]
            ax.set_xticks(range(len(values)), labels, fontsize=8 if any("\n" in label for label in labels) else None)
        elif _spans_decades(values):
            # e.g. eta = 0, 0.3, 1, 3: linear near 0, logarithmic above the smallest positive value
            ax.set_xscale("symlog", linthresh=min(v for v in values if v > 0))
            ax.set_xticks(sorted(set(values)), [str(v) for v in sorted(set(values))])
    moving = set(keys) | set(axis_keys(second) if second else [])
    fixed = {k: v for k, v in (summary.best_settings or {}).items() if k not in moving}
    fig.suptitle(f"sweep over {key}" + (f", one line per {second}" if second else "")
                 + (f" (other keys at the best point: {fixed})" if fixed else "") + "; mean ± std over seeds", fontsize=9)
    return _save(fig, path)


def patriarch_heatmaps(extras: dict, split: str, path: Path, max_classes: int = 40) -> Path | None:
    """Per arm, the patriarch's mean probability on class j for images of true class i (j != i), averaged
    over seeds: where each teacher puts its secondary confidence. None without data, or above
    ``max_classes`` classes (a 100 x 100 picture says little; the matrices stay in results.json)."""
    import numpy as np

    by_arm: dict[str, list] = {}
    names: list[str] = []
    for unit, payload in extras.items():
        matrix = (payload.get("soft_confusion") or {}).get(split)
        if matrix is not None and unit.endswith("-gen0"):
            by_arm.setdefault(unit.split("-seed")[0], []).append(np.array(matrix, dtype=float))
            names = payload.get("class_names") or names
    if not by_arm or len(next(iter(by_arm.values()))[0]) > max_classes:
        return None
    arms = sorted(by_arm, key=arm_sort_key)
    means = {arm: np.mean(by_arm[arm], axis=0) for arm in arms}
    for matrix in means.values():
        np.fill_diagonal(matrix, np.nan)  # the true class's own probability would drown the rest
    top = max(float(np.nanmax(m)) for m in means.values())
    classes = len(next(iter(means.values())))
    labels = names if len(names) == classes else [str(i) for i in range(classes)]
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms) + 0.8, 4.4), dpi=110, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        image = ax.imshow(means[arm], cmap="magma", vmin=0.0, vmax=top)
        ax.set_title(f"{arm} patriarch (n={len(by_arm[arm])})", fontsize=9)
        ax.set_xticks(range(classes), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(classes), labels if ax is axes[0][0] else [], fontsize=6)  # shared rows: label once
        ax.set_xlabel("predicted class j", fontsize=8)
    axes[0][0].set_ylabel("true class i", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="mean probability on j (diagonal hidden)")
    fig.suptitle(f"Where each patriarch puts its secondary confidence ({split} split, mean over seeds)", fontsize=9)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def equal_cost_plot(points: "list[CostPoint]", split: str, path: Path) -> Path:
    """Top-1 against the training epochs each model (or ensemble) cost, every arm: equal cost, equal x."""
    series = []
    for arm in sorted({p.cell.arm for p in points}, key=arm_sort_key):
        for kind in ("single", "ensemble"):
            chosen = sorted((p for p in points if (p.cell.arm, p.cell.kind, p.cell.split) == (arm, kind, split)),
                            key=lambda p: p.cost)
            series.append((arm, kind, [p.cost for p in chosen], [p.cell.means["top1"] for p in chosen],
                           [p.cell.stds["top1"] for p in chosen]))
    return _arm_lines(series, path, xlabel="training epochs spent (all models the result needed)",
                      ylabel="top-1 accuracy (%)", title=f"Equal cost: top-1 on the {split} split against training epochs",
                      log_x=True)


def _pooled_bins(extras: dict, split: str) -> dict[tuple[str, int], dict[str, list[float]]]:
    """Calibration bins of every (arm, generation), pooled over seeds (counts added, means weighted)."""
    import re

    pooled: dict[tuple[str, int], dict[str, list[float]]] = {}
    for unit, extra in extras.items():
        match = re.fullmatch(r"(.+)-seed(\d+)-gen(\d+)", unit)
        bins = (extra.get("calibration") or {}).get(split) if isinstance(extra, dict) else None
        if match is None or not bins:
            continue
        key = (match.group(1), int(match.group(3)))
        into = pooled.setdefault(key, {"count": [0.0] * len(bins["count"]), "conf": [0.0] * len(bins["count"]),
                                       "acc": [0.0] * len(bins["count"])})
        for i, n in enumerate(bins["count"]):
            into["count"][i] += n
            into["conf"][i] += n * bins["confidence"][i]
            into["acc"][i] += n * bins["accuracy"][i]
    return pooled


def calibration_plots(extras: dict, split: str, folder: Path) -> list[Path]:
    """A reliability diagram and a confidence histogram, each with the patriarchs and the last generation
    side by side, one line per arm (arm colours); [] for runs without calibration bins."""
    pooled = _pooled_bins(extras, split)
    if not pooled:
        return []
    arms = sorted({arm for arm, _ in pooled}, key=arm_sort_key)
    last = max(g for _, g in pooled)
    panels = [(0, "patriarchs (generation 0)"), (last, f"generation {last}")] if last > 0 else [(0, "generation 0")]
    paths = []
    for name, title in (("reliability", "reliability (bins of ≥ 10 images)"), ("confidence", "confidence histogram")):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), dpi=110, squeeze=False)
        for ax, (generation, label) in zip(axes[0], panels):
            for arm in arms:
                bins = pooled.get((arm, generation))
                if bins is None:
                    continue
                total = sum(bins["count"])
                # Bins of a handful of images swing between 0 and 100 %: a reliability point needs 10.
                filled = [i for i, n in enumerate(bins["count"]) if n >= 10]
                if name == "reliability":
                    ax.plot([bins["conf"][i] / bins["count"][i] for i in filled],
                            [100 * bins["acc"][i] / bins["count"][i] for i in filled], "-o", markersize=3,
                            color=arm_color(arm), label=arm)
                else:
                    edges = [i / len(bins["count"]) for i in range(len(bins["count"]) + 1)]
                    ax.stairs([100 * n / total for n in bins["count"]], edges, color=arm_color(arm), label=arm,
                              linewidth=1.5)
            if name == "reliability":
                ax.plot([0, 1], [0, 100], ":", color="grey", label="perfect calibration")
            ax.set_xlabel("confidence (top-1 probability)")
            ax.set_ylabel("accuracy (%)" if name == "reliability" else "images (%)")
            ax.set_title(f"{title}, {label}, {split} split", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        paths.append(_save(fig, folder / f"{name}_{split}.png"))
    return paths


def runs_plot(runs: "list[tuple[str, list[Cell]]]", split: str, path: Path) -> Path:
    """Top-1 against generation, one panel per run (shared y axis), arms in their colours."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.8), dpi=110, squeeze=False, sharey=True)
    for ax, (name, cells) in zip(axes[0], runs):
        _draw_arm_series(ax, _summary_series(cells, split, "top1"))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("generation")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"top-1 accuracy (%), {split} split")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)
