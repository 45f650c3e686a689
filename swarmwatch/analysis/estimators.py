"""Statistics behind the answers: rate intervals and capture–recapture estimates.

Closed forms only (no SciPy): the same numbers in the API, the CSV and the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Two-sided 95 % normal quantile.
Z95 = 1.959963984540054
PER = 100_000


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927); good near 0, unlike Wald."""
    if trials <= 0:
        raise ValueError("trials must be positive")
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Rate:
    per_100k: float
    ci_low: float
    ci_high: float


def rate_per_100k(peers: int, population: int) -> Rate | None:
    """Peers per 100,000 residents with a 95 % Wilson interval; None without a population.

    Peers are treated as a binomial share of the residents. A place can hold more
    peers than residents (a data centre in a village); the share is capped at 1.
    """
    if population <= 0:
        return None
    share = min(peers, population)
    low, high = wilson_interval(share, population)
    return Rate(PER * peers / population, PER * low, PER * high)


@dataclass(frozen=True, slots=True)
class Chao1:
    """Chao1 richness estimate (Chao 1984; bias-corrected form, Chao 2005).

    Observed peers plus an estimate of those no sample saw, from f1 (peers seen in
    exactly one sample) and f2 (exactly two). The 95 % interval is Chao's (1987)
    log-normal one, whose lower end never falls below the observed count.
    """

    observed: int
    f1: int
    f2: int
    estimate: float
    ci_low: float
    ci_high: float
    method: str = "Chao1 (bias-corrected) over sample rounds, log-normal 95 % CI (Chao 1987)"


def chao1(observed: int, f1: int, f2: int) -> Chao1:
    """Bias-corrected Chao1 with its variance and log-normal confidence interval."""
    if observed < 0 or f1 < 0 or f2 < 0 or f1 + f2 > observed:
        raise ValueError("need 0 <= f1 + f2 <= observed")
    unseen = f1 * (f1 - 1) / (2 * (f2 + 1))
    if f2 > 0:
        r = f1 / f2
        var = f2 * (r * r / 2 + r**3 + r**4 / 4)
    else:
        var = f1 * (f1 - 1) / 2 + f1 * (2 * f1 - 1) ** 2 / 4 - f1**4 / (4 * (observed or 1))
    var = max(var, 0.0)
    if unseen <= 0 or var == 0:
        return Chao1(observed, f1, f2, float(observed + unseen), float(observed), float(observed))
    c = math.exp(Z95 * math.sqrt(math.log(1 + var / (unseen * unseen))))
    return Chao1(observed, f1, f2, observed + unseen, observed + unseen / c, observed + unseen * c)


__all__ = ["PER", "Z95", "Chao1", "Rate", "chao1", "rate_per_100k", "wilson_interval"]
