"""Compare training arms over several seeds: mean ± sd per arm and paired differences with confidence intervals.

A single seed cannot tell a real difference between arms from the spread of training itself: on
the MAR demo the seed-to-seed spread of one arm is of the same order as the gaps between arms.
Arms trained with the same seed start from the same weights and see the same batches, so the
per-seed difference of two arms is a paired sample; its Student-t interval is the honest statement
of what the seeds resolve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = ["PairedDifference", "paired_difference", "mean_sd", "format_seed_table"]


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` over paired seeds.

    Attributes:
        mean: mean of the per-seed differences.
        sd: their sample standard deviation (0 for one seed).
        low: lower end of the two-sided confidence interval of the mean (``-inf`` for one seed).
        high: upper end (``inf`` for one seed).
        n: number of seeds.
        wins: seeds in which ``a > b``.
        confidence: the interval's confidence level.
    """

    mean: float
    sd: float
    low: float
    high: float
    n: int
    wins: int
    confidence: float

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes 0 (the seeds resolve the sign of the difference)."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "resolved": self.resolved}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value)."""
    if not values:
        raise ValueError("mean_sd: no values.")
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Mean of ``a[i] − b[i]`` with its Student-t confidence interval.

    Args:
        a: per-seed scores of one arm.
        b: per-seed scores of the other arm, in the same seed order.
        confidence: two-sided confidence level.

    Raises:
        ValueError: ``a`` and ``b`` differ in length or are empty, or ``confidence`` is not in (0, 1).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference: need the same non-zero number of seeds, got {len(a)} and {len(b)}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    if n == 1:
        low, high = -math.inf, math.inf
    else:
        from eqmar.utils import optional_import

        t = optional_import("scipy.stats", "confidence intervals over seeds", extra="apps").t
        half = float(t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedDifference(mean, sd, low, high, n, sum(d > 0 for d in diffs), confidence)


def format_seed_table(
    scores: Mapping[str, Sequence[float]],
    pairs: Sequence[tuple[str, str]],
    baseline: float | None = None,
    unit: str = "dB",
    digits: int = 2,
    confidence: float = 0.95,
) -> str:
    """A markdown table of per-arm mean ± sd and of the paired differences ``a − b``.

    Args:
        scores: arm -> per-seed score, every arm in the same seed order.
        pairs: ``(a, b)`` arm pairs to difference.
        baseline: a seed-independent reference score (e.g. LI) to show beside the arms.
        unit: unit shown in the headers.
        digits: decimals.
        confidence: confidence level of the intervals.
    """
    f = f"{{:+.{digits}f}}"
    g = f"{{:.{digits}f}}"
    lines = [f"| arm | per seed ({unit}) | mean ± sd |" + (" mean − baseline |" if baseline is not None else ""),
             "|---|---|---|" + ("---|" if baseline is not None else "")]
    for arm, values in scores.items():
        mean, sd = mean_sd(list(values))
        row = f"| {arm} | {' / '.join(g.format(v) for v in values)} | {g.format(mean)} ± {g.format(sd)} |"
        if baseline is not None:
            row += f" {f.format(mean - baseline)} |"
        lines.append(row)
    if baseline is not None:
        lines.append(f"| baseline | {g.format(baseline)} | – | – |")
    level = f"{confidence * 100:g} %"
    lines += ["", f"| difference | mean ± sd ({unit}) | {level} CI | seeds won |", "|---|---|---|---|"]
    for a, b in pairs:
        d = paired_difference(list(scores[a]), list(scores[b]), confidence)
        lines.append(
            f"| {a} − {b} | {f.format(d.mean)} ± {g.format(d.sd)} | [{f.format(d.low)}, {f.format(d.high)}]"
            f"{'' if d.resolved else ' (includes 0)'} | {d.wins} of {d.n} |"
        )
    return "\n".join(lines)
