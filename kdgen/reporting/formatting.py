"""How numbers and tables read in every report, verdict and sweep page: one place, so they read the same everywhere."""

from __future__ import annotations

import math


def signed(value: float, digits: int = 2) -> str:
    """``+1.23`` / ``-0.40``; a difference that rounds to zero reads ``+0.00``, never ``-0.00``."""
    text = f"{value:+.{digits}f}"
    return f"+{text[1:]}" if float(text) == 0 else text


def p_value(p: float, *, prose: bool = False) -> str:
    """A p-value to three decimals, ``<0.001`` below that (``< 0.001`` in sentences), ``n/a`` when undefined."""
    if math.isnan(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001" if prose else "<0.001"
    return f"{p:.3f}"


def difference(mean: float, std: float, digits: int = 2) -> str:
    """A paired difference over seeds: ``+0.42 ± 0.31`` (signed mean ± sample std)."""
    return f"{signed(mean, digits)} ± {std:.{digits}f}"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


def text_table(header: list[str], body: list[list[str]]) -> str:
    """A plain-text table for the terminal, columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*line) for line in body])
