"""The answer first: what a run's test numbers say about tolerant against strict generations, in words
that claim no more than the seeds allow.

Each statement is a paired comparison at the last generation (seeds paired), with the mean
difference, a 95 % confidence interval from the t distribution and a two-sided paired t-test. A
difference is called a win or a loss only at p < 0.05; otherwise the sentence says there is no
significant difference *with that many seeds*, which is the truth and not a proof of equality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from kdgen.run_folder import Row
from kdgen.formatting import p_value, signed

ALPHA = 0.05


@dataclass(frozen=True)
class Finding:
    """One paired comparison, ``arm − other`` at ``generation`` for ``kind`` models, on test top-1."""

    arm: str
    other: str
    kind: str
    generation: int
    n: int
    mean: float
    low: float
    high: float
    p: float
    detectable: float = math.nan  # smallest |difference| these seeds detect with 80 % power

    @property
    def label(self) -> str:
        models = "ensembles of generations" if self.kind == "ensemble" else "single models"
        return f"{self.arm} − {self.other}, {models}, generation {self.generation}"

    def sentence(self) -> str:
        """``label``: the difference, its interval and p, and what they allow one to say."""
        seeds = f"{self.n} seed{'s' if self.n != 1 else ''}"
        if self.n < 2:
            return f"{self.label}: {signed(self.mean)} points with 1 seed, which cannot be tested; run more seeds."
        numbers = f"{signed(self.mean)} points (95 % CI {signed(self.low)} to {signed(self.high)}, p {p_value(self.p, prose=True)})"
        if not math.isnan(self.p) and self.p < ALPHA:
            word = "better" if self.mean > 0 else "worse"
            return f"{self.label}: {self.arm} is **{word}** with {seeds}, {numbers}."
        power = "" if math.isnan(self.detectable) else \
            f"; these seeds would detect a true difference of ±{self.detectable:.2f} points with 80 % power"
        return f"{self.label}: **no significant difference** with {seeds}, {numbers}{power}."


def finding(values_a: dict[int, float], values_b: dict[int, float], arm: str, other: str, kind: str,
            generation: int) -> Finding | None:
    """``a − b`` paired over the seeds both have (the report's :func:`~kdgen.report.paired_stats`, so p is
    n/a below two seeds or when every difference is the same), with its 95 % interval; None without a
    common seed."""
    from kdgen.report import detectable_effect, paired_stats, t_half_width

    paired = paired_stats(values_a, values_b)
    if paired is None:
        return None
    n, mean = int(paired["n"]), float(paired["mean"])
    if n < 2:
        return Finding(arm, other, kind, generation, n, mean, math.nan, math.nan, math.nan)
    half = t_half_width(float(paired["std"]), n, ALPHA)
    return Finding(arm, other, kind, generation, n, mean, mean - half, mean + half, float(paired["p"]),
                   detectable_effect(float(paired["std"]), n))


def findings(rows: list[Row], split: str = "test") -> list[Finding]:
    """Tolerant − strict (single models and ensembles), then every arm's ensemble − the baseline's,
    then any other comparison an arm asks for, each at the last generation both arms have."""
    from kdgen.report import comparisons, values_by_cell

    values = values_by_cell(rows, split)
    arms = {str(r["arm"]) for r in rows}
    wanted = [("tolerant", "strict", "single"), ("tolerant", "strict", "ensemble")]
    wanted += [(arm, "baseline", "ensemble") for arm in sorted(arms - {"baseline"})]
    if not any(a in arms and b in arms for a, b, _ in wanted):  # other arms: what they ask to be compared with
        wanted = list(comparisons(arms))
    result = []
    for arm, other, kind in wanted:
        common = {g for (a, g, k) in values if a == arm and k == kind} & \
                 {g for (a, g, k) in values if a == other and k == kind}
        if not common:
            continue
        generation = max(common)
        found = finding(values[(arm, generation, kind)], values[(other, generation, kind)], arm, other, kind, generation)
        if found is not None:
            result.append(found)
    return result


def headline(found: list[Finding]) -> str:
    """One sentence: did tolerant generations beat strict ones (or, without both, the first comparison)?"""
    main = next((f for f in found if (f.arm, f.other) == ("tolerant", "strict")), found[0] if found else None)
    if main is None:
        return "No comparison yet: the run has no two arms with results on the same seeds."
    if main.n < 2:
        return f"With 1 seed, {main.arm} against {main.other} cannot be tested: run at least 3 seeds."
    if not math.isnan(main.p) and main.p < ALPHA:
        verb = "beat" if main.mean > 0 else "did worse than"
        return (f"{main.arm.capitalize()} {verb} {main.other} at generation {main.generation} "
                f"({signed(main.mean)} points, p {p_value(main.p, prose=True)}, {main.n} seeds).")
    return (f"No significant difference between {main.arm} and {main.other} with {main.n} seeds "
            f"({signed(main.mean)} points at generation {main.generation}, p {p_value(main.p, prose=True)}).")
