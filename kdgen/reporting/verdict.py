"""The answer first: what a run's test numbers say about its arms (tolerant against strict generations,
where both ran), in words that claim no more than the seeds allow.

Each statement is a paired comparison at the last generation (seeds paired), with the mean
difference, a 95 % confidence interval from the t distribution and a two-sided paired t-test. A
difference is called a win or a loss only at p < 0.05; otherwise the sentence says there is no
significant difference *with that many seeds*, which is the truth and not a proof of equality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kdgen import arms as arm_registry
from kdgen.reporting.formatting import p_value, signed
from kdgen.reporting.results import Comparison, Results
from kdgen.reporting.statistics import ALPHA, paired


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
    model: str = ""  # the generation's architecture, named where a chain changes architecture
    no_spread: bool = False  # the same difference on every seed: no t-test; p, low, high, detectable are NaN
    sign_p: float = math.nan  # then, with a nonzero difference: the exact two-sided sign test's p, 2 · 0.5^n

    @property
    def identical(self) -> bool:
        """No spread and no difference: both score the same on every seed."""
        return self.no_spread and math.isnan(self.sign_p)

    @property
    def significant(self) -> bool:
        """p < 0.05: the t-test's, or the sign test's where every seed gives the same difference."""
        p = self.sign_p if self.no_spread else self.p
        return not math.isnan(p) and p < ALPHA

    @property
    def where(self) -> str:
        return f"generation {self.generation}" + (f" ({self.model})" if self.model else "")

    @property
    def label(self) -> str:
        models = "ensembles of generations" if self.kind == "ensemble" else "single models"
        return f"{self.arm} − {self.other}, {models}, {self.where}"

    def sentence(self) -> str:
        """``label``: the difference, its interval and p, and what they allow one to say."""
        seeds = f"{self.n} seed{'s' if self.n != 1 else ''}"
        if self.n < 2:
            return f"{self.label}: {signed(self.mean)} points with 1 seed, which cannot be tested; run more seeds."
        if self.no_spread:
            return f"{self.label}: {self._no_spread_words()}."
        numbers = f"{signed(self.mean)} points (95 % CI {signed(self.low)} to {signed(self.high)}, p {p_value(self.p, prose=True)})"
        if not math.isnan(self.p) and self.p < ALPHA:
            word = "better" if self.mean > 0 else "worse"
            return f"{self.label}: {self.arm} is **{word}** with {seeds}, {numbers}."
        power = "" if math.isnan(self.detectable) else \
            f"; these seeds would detect a true difference of ±{self.detectable:.2f} points with 80 % power"
        return f"{self.label}: **no significant difference** with {seeds}, {numbers}{power}."

    def _no_spread_words(self) -> str:
        """What is true when every seed gives the same difference."""
        if self.identical:
            return (f"**identical on every one of the {self.n} seeds**, the same top-1 on each: no difference and no "
                    "seed-to-seed spread, so nothing to test and no detectable effect to give")
        same = (f"{signed(self.mean)} points on every one of the {self.n} seeds: no seed-to-seed spread, so no t-test, "
                f"no t interval and no detectable effect; an exact sign test gives p {p_value(self.sign_p, prose=True)}")
        if self.significant:
            return f"{self.arm} is **{'better' if self.mean > 0 else 'worse'}** with {self.n} seeds, {same}"
        return (f"**the same difference on every seed**, {same}, the smallest p {self.n} seeds can give "
                "(6 or more seeds can reach p < 0.05)")


def finding(values_a: dict[int, float], values_b: dict[int, float], arm: str, other: str, kind: str,
            generation: int) -> Finding | None:
    """``a − b`` paired over the seeds both have (:func:`kdgen.reporting.statistics.paired`, so p is n/a below two
    seeds or when every difference is the same: then ``no_spread`` and the sign test's p), with its 95 % interval
    (NaN where p is); None without a common seed."""
    found = paired(values_a, values_b)
    if found is None:
        return None
    if found.n < 2:
        return Finding(arm, other, kind, generation, found.n, found.mean, math.nan, math.nan, math.nan)
    half = found.half_width
    return Finding(arm, other, kind, generation, found.n, found.mean, found.mean - half, found.mean + half, found.p,
                   found.detectable, no_spread=found.no_spread, sign_p=found.sign_p)


def verdict_comparisons(results: Results) -> list[Comparison]:
    """What the verdict states, from the arms recorded in the run: each arm against its first rival (the first
    of its ``compare_with``) as single models and as ensembles, and against its other rivals as ensembles;
    the arm whose comparison is the run's question (``Arm.headline``) first, then the rest in report order."""
    recorded = [a for a in results.arms if a in arm_registry.names()]
    ordered = sorted(recorded, key=lambda a: (not arm_registry.get(a).headline, arm_registry.sort_key(a)))
    wanted = []
    for arm in ordered:
        rivals = [other for other in arm_registry.get(arm).compare_with if other in results.arms]
        for index, other in enumerate(rivals):
            wanted += [(arm, other, "single"), (arm, other, "ensemble")] if index == 0 else [(arm, other, "ensemble")]
    return wanted


def findings(results: Results, split: str = "test", models: list[str] | None = None) -> list[Finding]:
    """Every :func:`verdict_comparisons` entry at the last generation both arms have, on ``split`` top-1.
    ``models``: each generation's architecture, for a chain that changes it (the findings then name it)."""
    values = results.values(split)
    named = models is not None and len(set(models)) > 1
    result = []
    for arm, other, kind in verdict_comparisons(results):
        common = results.common_generations(arm, other, split, kind)
        if not common:
            continue
        generation = common[-1]
        found = finding(values[(arm, generation, kind)], values[(other, generation, kind)], arm, other, kind, generation)
        if found is not None:
            if named and generation < len(models):  # type: ignore[arg-type]
                found = replace(found, model=models[generation])  # type: ignore[index]
            result.append(found)
    return result


def headline(found: list[Finding]) -> str:
    """One sentence on the first finding (the run's question: tolerant against strict where both ran)."""
    main = found[0] if found else None
    if main is None:
        return "No comparison yet: the run has no two arms with results on the same seeds."
    if main.n < 2:
        return f"With 1 seed, {main.arm} against {main.other} cannot be tested: run at least 3 seeds."
    if main.identical:
        return f"{main.arm.capitalize()} and {main.other} scored the same on every one of the {main.n} seeds at {main.where}."
    if main.no_spread:
        verb = "beat" if main.mean > 0 else "did worse than"
        if main.significant:
            return (f"{main.arm.capitalize()} {verb} {main.other} at {main.where} ({signed(main.mean)} points on every "
                    f"one of the {main.n} seeds, sign test p {p_value(main.sign_p, prose=True)}).")
        return (f"{main.arm.capitalize()} {verb} {main.other} by the same {signed(main.mean)} points on every one of the "
                f"{main.n} seeds at {main.where}: no spread, so no t-test; sign test p "
                f"{p_value(main.sign_p, prose=True)}, not significant with {main.n} seeds.")
    if main.significant:
        verb = "beat" if main.mean > 0 else "did worse than"
        return (f"{main.arm.capitalize()} {verb} {main.other} at {main.where} "
                f"({signed(main.mean)} points, p {p_value(main.p, prose=True)}, {main.n} seeds).")
    return (f"No significant difference between {main.arm} and {main.other} with {main.n} seeds "
            f"({signed(main.mean)} points at {main.where}, p {p_value(main.p, prose=True)}).")
