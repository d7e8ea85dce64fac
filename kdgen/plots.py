"""Report plots with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"baseline": "#7f7f7f", "strict": "#1f77b4", "tolerant": "#d62728"}


def _series(summary: list[dict[str, object]], split: str, kind: str, arm: str, metric: str) -> tuple[list, list, list]:
    points = sorted((int(e["generation"]), float(e[f"{metric}_mean"]), float(e[f"{metric}_std"]))  # type: ignore[arg-type]
                    for e in summary if e["split"] == split and e["kind"] == kind and e["arm"] == arm
                    and f"{metric}_mean" in e)
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def metric_plot(summary: list[dict[str, object]], split: str, metric: str, path: Path, ylabel: str) -> Path:
    """``metric`` against generation for every arm: single models solid, ensembles dashed, ± std bars."""
    arms = sorted({str(e["arm"]) for e in summary}, key=lambda a: list(COLORS).index(a) if a in COLORS else 99)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for arm in arms:
        color = COLORS.get(arm)
        for kind, style in (("single", "-o"), ("ensemble", "--s")):
            x, y, err = _series(summary, split, kind, arm, metric)
            if x:
                ax.errorbar(x, y, yerr=err, fmt=style, color=color, capsize=3, markersize=4,
                            label=f"{arm} ({kind})", alpha=0.9 if kind == "single" else 0.7)
    ax.set_xlabel("generation (0 = patriarch; ensemble = generations 1..g)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} on the {split} split (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
