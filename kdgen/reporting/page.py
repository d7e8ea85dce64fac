"""The run report as a page: the verdict first, then the main plot, then the tables and the other plots.

A page is a list of blocks (heading, paragraph, list, table, image) rendered twice: to markdown
(report.md, images linked from plots/) and to one self-contained HTML file (report.html, images
embedded as data URIs, so it can be mailed or attached to a review). Numbers never wrap.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Union

from kdgen.checkpoint import write_json, write_text
from kdgen.folders import read_architectures, tracking_note
from kdgen.reporting.formatting import markdown_table
from kdgen.reporting.results import Results, format_cell
from kdgen.reporting.tables import diff_table, gains_table, secondary_table, summary_table, trend_table

# ("h2", text) | ("p", text) | ("ul", [items]) | ("table", caption, header, body) | ("img", path)
Block = Union[tuple[str, str], tuple[str, list[str]], tuple[str, str, list[str], list[list[str]]], tuple[str, Path]]

CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}"
       "h1{margin:0 0 .3em}div.verdict{border-left:6px solid #1f77b4;background:#f4f8fc;padding:.6em 1em;margin:1em 0}"
       "div.verdict p.headline{font-size:1.25em;margin:.2em 0 .6em}div.wide{overflow-x:auto}"
       "table{border-collapse:collapse;margin:.5em 0 1.5em}caption{text-align:left;font-weight:600;padding:.3em 0}"
       "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}"
       "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
       "img{max-width:100%;display:block;margin:.5em 0 1.5em}.note{color:#555;font-size:.9em}")


def _inline(text: str) -> str:
    """Markdown's ``**bold**`` and `` `code` `` as HTML; everything else escaped."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def to_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        kind = block[0]
        if kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [str(block[1]), ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]  # type: ignore[union-attr]
        elif kind == "table":
            _, caption, header, body = block  # type: ignore[misc]
            lines += [f"**{caption}**", "", markdown_table(header, body), ""]
        elif kind == "img":
            path = Path(block[1])  # type: ignore[arg-type]
            lines += [f"![{path.stem}](plots/{path.name})", ""]
    return "\n".join(lines)


def to_html(title: str, blocks: list[Block], verdict_blocks: int = 0) -> str:
    """The page; the first ``verdict_blocks`` blocks are framed as the verdict box."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for index, block in enumerate(blocks):
        if verdict_blocks and index == 0:
            parts.append("<div class='verdict' id='verdict'>")
        kind = block[0]
        if kind == "h2":
            parts.append(f"<h2>{html.escape(str(block[1]))}</h2>")
        elif kind == "p":
            css = " class='headline'" if verdict_blocks and index == 1 else ""
            parts.append(f"<p{css}>{_inline(str(block[1]))}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block[1]) + "</ul>")  # type: ignore[union-attr]
        elif kind == "table":
            _, caption, header, body = block  # type: ignore[misc]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in body)
            parts.append(f"<div class='wide'><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr>"
                         f"</thead><tbody>{rows}</tbody></table></div>")
        elif kind == "img":
            path = Path(block[1])  # type: ignore[arg-type]
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<img src='data:image/png;base64,{data}' alt='{html.escape(path.stem)}'>")
        if verdict_blocks and index == verdict_blocks - 1:
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path, title: str, intro: list[str], tables: list[tuple[str, list[str], list[list[str]]]],
               plots: list[Path]) -> None:
    """A simple self-contained page: intro paragraphs, captioned tables, embedded plots (kdgen sweep)."""
    blocks: list[Block] = [("p", line) for line in intro]
    blocks += [("table", name, header, body) for name, header, body in tables]
    blocks += [("img", plot) for plot in plots]
    write_text(path, to_html(title, blocks))


def chain_models(architectures: list[dict] | None) -> list[str] | None:
    """Each generation's architecture, where a run's chain changes architecture (else None)."""
    names = [str(a["model"]) for a in architectures or []]
    return names if len(set(names)) > 1 else None


def _size(params: float) -> str:
    return f"{params / 1e6:.2f}M" if params >= 1e6 else f"{params / 1e3:.1f}k"


def architecture_sentence(architectures: list[dict]) -> str:
    """What a chain that changes architecture compares: the patriarch's model against the students', and how
    much smaller they are; and what 'against baseline' means then."""
    patriarch = architectures[0]
    parts = []
    for name in dict.fromkeys(str(a["model"]) for a in architectures[1:]):
        generations = [int(a["generation"]) for a in architectures if a["model"] == name and a["generation"] > 0]
        one = next(a for a in architectures if a["model"] == name)
        span = f"generation {generations[0]}" if len(generations) == 1 else f"generations {generations[0]}–{generations[-1]}"
        ratio = (f"{patriarch['params'] / one['params']:.1f}× fewer parameters and "
                 f"{patriarch['flops'] / max(one['flops'], 1):.1f}× fewer FLOPs than the patriarch"
                 if one["params"] < patriarch["params"] else
                 f"{one['params'] / patriarch['params']:.1f}× the patriarch's parameters")
        parts.append(f"{span} **{name}** ({_size(one['params'])} parameters, "
                     f"{one['flops'] / 1e6:.3g} MFLOPs per image: {ratio})")
    return (f"**A chain that changes architecture:** the patriarch is **{patriarch['model']}** "
            f"({_size(patriarch['params'])} parameters, {patriarch['flops'] / 1e6:.3g} MFLOPs per image); "
            + "; ".join(parts) + ". The baseline arm trains each generation's architecture alone, so "
            "'− baseline' at a generation compares a taught student with its own architecture trained without a "
            "teacher.")


def verdict_blocks(results: Results, best: dict[str, object] | None, run_name: str,
                   architectures: list[dict] | None = None) -> list[Block]:
    """The answer to the run's question, computed from the test rows, and the model to keep."""
    from kdgen.reporting.verdict import findings, headline

    models = chain_models(architectures)
    found = findings(results, "test", models)
    seeds = results.seeds
    blocks: list[Block] = [("h2", "Verdict"), ("p", f"**{headline(found)}**")]
    items = ([architecture_sentence(architectures)] if models and architectures else []) + [f.sentence() for f in found]
    if best is not None:
        which = f"{best['arm']}/{best['seed']}/{best['generation']}"
        model = f" ({models[int(best['generation'])]})" if models and int(best["generation"]) < len(models) else ""  # type: ignore[arg-type]
        items.append(f"Model to keep, chosen on the val split only: **{best['arm']} generation {best['generation']}{model}, "
                     f"seed {best['seed']}** (val top-1 {float(best['val_top1']):.2f} %, file {best['checkpoint']}); "
                     f"use it with `kdgen predict {run_name} IMAGES --which {which}` or `kdgen.load(run_dir)`.")
    if models and best is not None and models[int(best["generation"])] != models[-1]:  # type: ignore[arg-type]
        compact = results.best_unit(g for g, name in enumerate(models) if name == models[-1])
        if compact is not None:
            which = f"{compact['arm']}/{compact['seed']}/{compact['generation']}"
            items.append(f"Best **{models[-1]}** model, chosen on the val split only: **{compact['arm']} generation "
                         f"{compact['generation']}, seed {compact['seed']}** (val top-1 {float(compact['val_top1']):.2f} %): "
                         f"`kdgen predict {run_name} IMAGES --which {which}`.")
    ceiling = ceiling_note(results, found)
    if ceiling:
        items.append(ceiling)
    blocks.append(("ul", items))
    blocks.append(("p", f"Test split, {len(seeds)} seed{'s' if len(seeds) != 1 else ''}: final numbers, never used for any choice. Differences are "
                        "paired by seed (95 % confidence interval from the t distribution, two-sided paired t-test); "
                        "'better' or 'worse' only at p < 0.05."))
    return blocks


def architecture_table(architectures: list[dict]) -> tuple[list[str], list[list[str]]]:
    """gen, model, parameters, MFLOPs per image, and each relative to the patriarch's."""
    patriarch = architectures[0]
    header = ["gen", "model", "parameters", "MFLOPs / image", "parameters / patriarch's", "FLOPs / patriarch's"]
    body = [[str(a["generation"]), str(a["model"]), f"{int(a['params']):,}", f"{a['flops'] / 1e6:.3g}",
             f"{a['params'] / patriarch['params']:.2f}", f"{a['flops'] / max(patriarch['flops'], 1):.2f}"]
            for a in architectures]
    return header, body


def ceiling_note(results: Results, found: list) -> str | None:
    """Why a run can show nothing: its models are near the data set's ceiling, so the few test errors left
    cannot carry differences of the size generations make. None when that is not the case."""
    import math

    singles = [float(r["top1"]) for r in results.rows if r["split"] == "test" and r["kind"] == "single"]  # type: ignore[arg-type]
    if not singles:
        return None
    error = 100.0 - sum(singles) / len(singles)
    detectable = [f.detectable for f in found if not math.isnan(f.detectable)]
    tested = [f for f in found if f.n >= 2]
    if error >= 3.0 or not tested:
        return None
    if any(f.significant for f in found):
        # A difference of a few test images can pass p < 0.05 by itself among several comparisons.
        return (f"**Near the ceiling:** its models get {100 - error:.1f} % of the test images right on average, so "
                f"only {error:.1f} % are left to win: a significant difference here is a few images, one of several "
                "comparisons; read it as a hint and check it where there is room (effects of the size generations "
                "make, about one point, show on `kdgen run --config configs/fashion-mnist-converged.yaml`).")
    seeds = (f"its seeds detect differences of ±{min(detectable):.2f} points at best" if detectable else
             "each comparison gives the same difference on every seed (no spread, so no t-test)")
    return (f"**Why this run cannot show much:** its models get {100 - error:.1f} % of the test images right on "
            f"average, so only {error:.1f} % are left to win, while {seeds}. Data near its ceiling (like the embedded digits, made for "
            "speed) cannot show effects of the size generations make (about one point on converged "
            "Fashion-MNIST, docs/findings.md): run `kdgen run --config configs/fashion-mnist-converged.yaml` for that.")


def data_note(cfg: Any) -> str | None:
    """Which of the data's splits are kdgen's train, val and test (every choice is made on val)."""
    if cfg is None:
        return None
    data = cfg.data
    where = f" ({data.root})" if data.root else ""
    subset = f"{data.train_per_class} images per class of " if data.train_per_class else ""
    if getattr(data, "val_split", None):
        val = f"the data's own '{data.val_split}' split"
        train = f"{subset}its training split"
    else:
        val = f"{data.val_fraction:.0%} of its training split, held out stratified (split seed {data.split_seed})"
        train = f"{subset}the rest of its training split"
    return f"Data: {data.name}{where}. Train: {train}; val: {val}; test: its test split, used for no choice."


NOTES = ["Mean ± sample std over seeds; top-1 in %, NLL in nats, ECE with 15 bins; confidence is the mean top-1 "
         "probability (a tolerant patriarch's is lower than a strict one's).",
         "Detectable (80 %): the true difference a two-sided paired t-test at p < 0.05 finds with 80 % power over "
         "these seeds, solved exactly on the noncentral t with the differences' sample std. Where every seed gives "
         "the same difference there is no t-test: p reads '(sign test)', the exact two-sided sign test's 2 · 0.5^n "
         "(the smallest p n seeds can give), or 'identical' for no difference on any seed, and nothing is detectable "
         "('no spread').",
         "Ensembles average the softmax of generations 1..g (students only; baseline: independent models 1..g).",
         "Secondary information: entropy in nats; mass ranks 2..K is the probability on the 2nd..K-th classes; "
         "semantic 2nd choice is how often the best class other than the true one shares the true class's group "
         "(data sources with groups only); semantic mass is the share of non-target probability on that group. "
         "train top-1/NLL are on a fixed unaugmented sample of the training split: near 100 % means the model converged."]


def build_report(run_dir: Path, results: Results | None = None, wall_time_s: float | None = None) -> Path:
    """Write ``report.md``, self-contained ``report.html``, ``summary.json``, ``best.json`` and ``plots/*.png``
    (``results``: the run's, when the caller has them already; else read from ``run_dir``)."""
    from kdgen.reporting.equal_cost import equal_cost_points, equal_cost_table, run_config
    from kdgen.reporting.plots import (accuracy_confidence_plot, calibration_plots, equal_cost_plot, metric_plot,
                                       patriarch_heatmaps)

    run_dir = Path(run_dir)
    results = Results.load(run_dir) if results is None else results
    cells = results.cells
    plots_dir = run_dir / "plots"
    best = results.best_unit()
    if best is not None:
        write_json(run_dir / "best.json", best)
    architectures = read_architectures(run_dir)
    models = chain_models(architectures)  # tick labels of every per-generation plot; None for one architecture
    blocks = verdict_blocks(results, best, str(run_dir), architectures)
    lead = len(blocks)
    has = {split: split in results.splits for split in ("test", "val")}
    if has["test"]:
        blocks.append(("img", metric_plot(cells, "test", "top1", plots_dir / "top1_test.png", "top-1 accuracy (%)",
                                          models)))
    extras = results.extras
    cfg = run_config(run_dir)
    flops = [float(a["flops"]) for a in architectures] if architectures else None
    cost_points = equal_cost_points(cells, cfg, flops) if cfg is not None else []
    compare_cost = len({p.cost for p in cost_points}) > 1  # one cost for everything: nothing to compare
    if models:
        blocks.append(("table", "Each generation's model (forward FLOPs per image of the data's size)",
                       *architecture_table(architectures)))
    for split, heading in (("test", "Test split: final numbers"),
                           ("val", "Val split: what the choices were made on (best model, sweeps)")):
        if not has[split]:
            continue
        blocks.append(("h2", heading))
        for caption, (header, body) in (("Mean ± std over seeds", summary_table(results, split)),
                                        ("Do generations pay? Each generation against its patriarch",
                                         gains_table(results, split)),
                                        ("Paired differences between arms", diff_table(results, split)),
                                        ("Trend from generation 2 on: does an arm keep improving or saturate? "
                                         "Slopes fitted per seed", trend_table(results, split)),
                                        ("Secondary information and convergence", secondary_table(results, split))):
            if body:
                blocks.append(("table", f"{caption}, {split} split", header, body))
        if compare_cost:
            header, body = equal_cost_table(cost_points, split)
            if body:
                blocks.append(("table", f"Equal cost: top-1 against training epochs spent, {split} split", header, body))
    from kdgen.reporting.probes import transfer_blocks

    blocks += transfer_blocks(run_dir)
    blocks.append(("h2", "Plots"))
    figures = []
    for split in ("test", "val"):
        if has[split]:
            figures.append(accuracy_confidence_plot(cells, split, plots_dir / f"top1_confidence_{split}.png",
                                                    models))
    if has["test"]:
        figures.append(metric_plot(cells, "test", "ece", plots_dir / "ece_test.png", "ECE", models))
        figures += calibration_plots(extras, "test", plots_dir)
    heatmap = patriarch_heatmaps(extras, "test", plots_dir / "patriarch_soft_confusion_test.png")
    if heatmap is not None:
        figures.append(heatmap)
    if compare_cost:
        figures += [equal_cost_plot(cost_points, split, plots_dir / f"equal_cost_{split}.png")
                    for split in ("test", "val") if has[split]]
    if has["val"]:
        figures.append(metric_plot(cells, "val", "top1", plots_dir / "top1_val.png", "top-1 accuracy (%)", models))
    blocks += [("img", figure) for figure in figures]
    if wall_time_s is None and (run_dir / "timing.json").is_file():  # a rebuild keeps the run's wall time
        from kdgen.checkpoint import read_json

        wall_time_s = read_json(run_dir / "timing.json").get("wall_time_s")
    notes = NOTES + ([f"Wall time: {wall_time_s:.1f} s."] if wall_time_s is not None else [])
    notes += [note for note in [data_note(cfg), tracking_note(run_dir)] if note]  # the splits; where MLflow has it
    blocks += [("h2", "How to read this")] + [("p", note) for note in notes]
    write_text(run_dir / "report.md", to_markdown("kdgen report", blocks))
    write_json(run_dir / "summary.json", {"summary": [c.to_json() for c in cells]})
    write_text(run_dir / "report.html", to_html("kdgen report", blocks, verdict_blocks=lead))
    return run_dir / "report.md"


def _run_names(run_dirs: list[Path]) -> list[str]:
    """Folder names, with their parent where two runs share a name."""
    names = [d.resolve().name for d in run_dirs]
    return [f"{d.resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def build_comparison(run_dirs: list[Path], out: Path) -> Path:
    """One page comparing several run folders (two data sets, before/after a change): each run's verdict,
    a table of test top-1 per arm, and their accuracy-per-generation plots side by side."""
    from kdgen.reporting.equal_cost import run_config
    from kdgen.reporting.plots import runs_plot
    from kdgen.reporting.verdict import findings, headline

    names = _run_names(run_dirs)
    runs = [Results.load(d) for d in run_dirs]
    blocks: list[Block] = [("h2", "Verdict per run")]
    for name, run_dir, results in zip(names, run_dirs, runs):
        cfg = run_config(run_dir)
        what = f"{cfg.data.name}, {' → '.join(dict.fromkeys(cfg.chain_models))}, " if cfg is not None else ""
        seeds = len(results.seeds)
        found = findings(results, "test", chain_models(read_architectures(run_dir)))
        blocks += [("p", f"**{name}** ({what}{seeds} seeds): {headline(found)}"), ("ul", [f.sentence() for f in found])]
    lead = len(blocks)
    blocks.append(("p", "Test split: final numbers, never used for any choice; differences paired by seed within a run."))
    header = ["run", "arm", "patriarch", "last generation", "ensemble (last)"]
    body = []
    for name, results in zip(names, runs):
        test = results.cells_in("test")
        for arm in results.arms:
            last = max((c.generation for c in test if c.arm == arm), default=None)
            if last is None:
                continue
            body.append([name, arm, format_cell(results.cell("test", arm, 0), "top1"),
                         f"{format_cell(results.cell('test', arm, last), 'top1')} (gen {last})",
                         format_cell(results.cell("test", arm, last, "ensemble"), "top1")])
    blocks.append(("table", "Test top-1 (%), mean ± std over seeds", header, body))
    out.mkdir(parents=True, exist_ok=True)
    blocks.append(("img", runs_plot([(name, results.cells) for name, results in zip(names, runs)], "test",
                                    out / "plots" / "top1_test_runs.png")))
    title = f"kdgen comparison of {len(run_dirs)} runs"
    write_text(out / "report.md", to_markdown(title, blocks))
    write_text(out / "report.html", to_html(title, blocks, verdict_blocks=lead))
    return out / "report.md"
