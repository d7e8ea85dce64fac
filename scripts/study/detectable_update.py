"""Recompute the "detectable (80 %)" figures of hand-written study pages from their run folders (issue 29).

Until issue 29, kdgen's detectable effect was the shortcut ``(t_0.975 + t_0.8) · std / sqrt(n)``, which understates
what a paired t-test detects with 80 % power at small n; it is now solved exactly on the noncentral t
(:func:`kdgen.reporting.statistics.detectable_effect`). The study pages quote tables that ``scripts/compare_arms.py``
and ``kdgen report`` printed with the shortcut, each row a paired difference ``mean ± std``, its p and its detectable
effect.

Every row is found again in the data: the script pairs, by seed, every line (run folder × arm × kind, and each
``transfer/*.json`` probe) of every ``results.json`` under ``--runs`` with every other at the same split and
generation, and keeps the pairs that print the row's ``mean ± std``, p, n and old detectable exactly. Where those pairs agree on the
new detectable value (at the page's precision), the row is settled from the data; where no pair prints the row,
the row's own numbers bound the std (its shown std, its old detectable over the shortcut's factor, and |t| from its
mean and p) and the row is settled when that bound leaves one rounding; otherwise it is listed as AMBIGUOUS.

    python scripts/study/detectable_update.py docs/study/*.md            # list old -> new
    python scripts/study/detectable_update.py --write docs/study/*.md    # and rewrite the cells that moved
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kdgen.reporting.statistics import detectable_effect  # noqa: E402

NUMBER = r"[+\-−]?\d+(?:\.\d+)?"
COUNTS: dict[str, int] = defaultdict(int)  # how each row was settled


def shortcut(n: int) -> float:
    """The old per-std factor."""
    return (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) / math.sqrt(n)


def exact(n: int) -> float:
    return detectable_effect(1.0, n)


def number(text: str) -> float:
    return float(text.replace("−", "-"))


def std_interval(n: int, mean: float, std: float, p: str, old: float, digits: int) -> tuple[float, float]:
    """The differences' std, as far as the row's shown numbers pin it down (an empty interval: low > high)."""
    half = 0.5 * 10 ** -digits
    low, high = max(std - 0.005, 0.0), std + 0.005
    k = shortcut(n)
    low, high = max(low, (old - half) / k), min(high, (old + half) / k)
    if re.fullmatch(r"\d\.\d{3}", p) and 0.001 <= float(p) < 0.999 and abs(mean) >= 0.005:
        p_low, p_high = max(float(p) - 0.0005, 1e-12), float(p) + 0.0005
        t_high, t_low = stats.t.isf(p_low / 2, n - 1), stats.t.isf(p_high / 2, n - 1)
        m_low, m_high = abs(mean) - 0.005, abs(mean) + 0.005
        low, high = max(low, m_low * math.sqrt(n) / t_high), min(high, m_high * math.sqrt(n) / t_low)
    return low, high


def settle(n: int, interval: tuple[float, float], digits: int) -> str | None:
    """The new value, rounded as the page shows it; None where the interval leaves two roundings."""
    low, high = interval
    if low > high:
        return None
    a, b = f"{low * exact(n):.{digits}f}", f"{high * exact(n):.{digits}f}"
    return a if a == b else None


def signed(value: float) -> str:
    text = f"{value:+.2f}"
    return f"+{text[1:]}" if float(text) == 0 else text


def p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def lines_of(root: Path) -> dict[tuple, dict[tuple, dict[int, float]]]:
    """``{(split, generation, kind, probe): {(folder, arm): {seed: top1}}}`` of every run folder under ``root``."""
    found: dict[tuple, dict[tuple, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    files = [(f, None) for f in root.rglob("results.json")] + [(f, f.stem) for f in root.rglob("transfer/*.json")]
    for path, probe in files:
        try:
            rows = json.loads(path.read_text()).get("rows", [])
        except (OSError, ValueError, AttributeError):
            continue
        folder = str(path.parent.parent if probe else path.parent)
        for r in rows:
            if "top1" in r and "seed" in r:
                key = (r["split"], int(r["generation"]), r.get("kind", "single"), probe or r.get("probe"))
                found[key][(folder, r["arm"])][int(r["seed"])] = float(r["top1"])
    return found


def data_index(root: Path, wanted: set[str]) -> dict[tuple[str, str], set[tuple[int, float]]]:
    """``{(mean ± std, p): {(n, std)}}`` of every seed-paired pair of lines that prints a wanted ``mean ± std``."""
    index: dict[tuple[str, str], set[tuple[int, float]]] = defaultdict(set)
    for group in lines_of(root).values():
        items = list(group.items())
        for i, (_, a) in enumerate(items):
            for j, (_, b) in enumerate(items):
                seeds = sorted(set(a) & set(b))
                if i == j or len(seeds) < 2:
                    continue
                diffs = np.array([a[s] - b[s] for s in seeds])
                std = float(diffs.std(ddof=1))
                text = f"{signed(float(diffs.mean()))} ± {std:.2f}"
                if text not in wanted or std < 1e-9:
                    continue
                n = len(seeds)
                p = float(2 * stats.t.sf(abs(diffs.mean()) / (std / math.sqrt(n)), n - 1))
                index[(text, p_text(p))].add((n, round(std, 12)))
    return index


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(lines: list[str]):
    """(header index, header cells, [row indices]) of every markdown table with a detectable column."""
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and any(c.startswith("detectable") for c in cells(lines[i])):
            rows, j = [], i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append(j)
                j += 1
            yield i, cells(lines[i]), rows
            i = j
        else:
            i += 1


def infer_n(parsed: list[tuple[float, float]]) -> int | None:
    """The n whose shortcut agrees with every (std, old detectable) of a table without an n column."""
    fits = [n for n in range(2, 41)
            if all(s - 0.005 <= (d + 0.005) / shortcut(n) and (d - 0.005) / shortcut(n) <= s + 0.005 for s, d in parsed)]
    return fits[0] if len(fits) == 1 else None


def wanted_rows(paths: list[Path]) -> set[str]:
    """Every ``mean ± std`` shown beside a detectable figure."""
    wanted = set()
    for path in paths:
        lines = path.read_text().splitlines()
        for _, header, rows in tables(lines):
            col = next(i for i, c in enumerate(header) if c.startswith("detectable"))
            for r in rows:
                wanted.add(cells(lines[r])[col - 2].replace("−", "-"))
    return wanted


def update(path: Path, write: bool, index: dict) -> list[tuple[str, str, str, str]]:
    lines = path.read_text().splitlines(keepends=True)
    moved = []
    for head, header, rows in tables(lines):
        col = next(i for i, c in enumerate(header) if c.startswith("detectable"))
        n_col = header.index("n") if "n" in header else None
        parsed = {}
        for r in rows:
            row = cells(lines[r])
            match = re.fullmatch(rf"±({NUMBER})", row[col])
            diff = re.fullmatch(rf"({NUMBER}) ± ({NUMBER})", row[col - 2])
            if match and diff:
                parsed[r] = (row, number(diff.group(1)), number(diff.group(2)), row[col - 1], number(match.group(1)),
                             len(match.group(1).split(".")[1]))
        table_n = None if n_col is not None else infer_n([(v[2], v[4]) for v in parsed.values()])
        for r, (row, mean, std, p, old, digits) in parsed.items():
            n = int(row[n_col]) if n_col is not None else table_n
            where = f"{path}:{r + 1}"
            label = " / ".join(row[:2])
            key = (row[col - 2].replace("−", "-"), p.replace("−", "-"))
            shown = f"{old:.{digits}f}"  # the shortcut's value, or the exact one on a page already updated
            pairs = {(m, sd) for m, sd in index.get(key, set())  # that also print the row's n and detectable
                     if (n is None or m == n) and shown in (f"{sd * shortcut(m):.{digits}f}", f"{sd * exact(m):.{digits}f}")}
            news = {f"{sd * exact(m):.{digits}f}" for m, sd in pairs}
            if len(news) == 1:
                COUNTS["from the data"] += 1
                new = news.pop()
                if float(new) != old:
                    moved.append((where, label, f"±{old:.{digits}f}", f"±{new}"))
                    if write:
                        row[col] = f"±{new}"
                        lines[r] = "| " + " | ".join(row) + " |\n"
                continue
            if len(news) > 1:
                moved.append((where, label, f"±{old:.{digits}f}", f"AMBIGUOUS (data: {sorted(news)})"))
                continue
            if n is None:
                moved.append((where, label, f"±{old:.{digits}f}", "AMBIGUOUS (n unknown)"))
                continue
            new = settle(n, std_interval(n, mean, std, p, old, digits), digits)
            COUNTS["bounded by the row's numbers" if new else "ambiguous"] += 1
            if new is None:
                moved.append((where, label, f"±{old:.{digits}f}", f"AMBIGUOUS (n {n}, not in the data)"))
                continue
            if float(new) != old:
                moved.append((where, label, f"±{old:.{digits}f}", f"±{new} (bounded, not in the data)"))
                if write:
                    row[col] = f"±{new}"
                    lines[r] = "| " + " | ".join(row) + " |\n"
    if write:
        path.write_text("".join(lines))
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--write", action="store_true", help="rewrite the cells that moved (ambiguous ones are left)")
    parser.add_argument("--runs", type=Path, default=Path("docs"), help="where the run folders are (default docs)")
    args = parser.parse_args()
    index = data_index(args.runs, wanted_rows(args.pages))
    print("| page:line | row | old | new |\n|---|---|---|---|")
    for page in args.pages:
        for where, label, old, new in update(page, args.write, index):
            print(f"| {where} | {label} | {old} | {new} |")
    print(f"rows: {dict(COUNTS)}", file=sys.stderr)


if __name__ == "__main__":
    main()
