"""Cell-key perturbation of published counts (the ABS TableBuilder method), for non-owners.

Each peer carries a fixed random record key; a published cell's noise is a function of
its count and the sum of its peers' record keys, so the same peers always get the same
noise however the question is phrased, and differencing answers recovers no count.

The method (Fraser & Wooton 2005; Thompson, Broadfoot & Elazar 2013, ABS):

* Every peer row gets a record key, uniform in [0, M) with M = RECORD_KEY_MODULUS,
  drawn once (new_record_key) and never changed. Rollups keep, beside each count n,
  the sum of its peers' record keys; sums add up exactly like counts.
* A cell's key is ck = (record-key sum) mod M: uniform on [0, M) for any non-empty
  cell, the same for the same set of peers, unrelated for sets that differ by a peer.
* The perturbation is p = table(n, ck): row n of a fixed table whose M columns hold
  each value of -BOUND..BOUND in proportion to TRIANGULAR_WEIGHTS (1 2 3 4 3 2 1)/16,
  laid out in a different fixed order per row. So p is bounded (|p| <= 3), has mean
  exactly 0 and variance 2.5 over the cell keys, and P(p = 0) = 1/4.
* Published value: 0 for an empty cell; withheld (None) for 0 < n < k; else n + p,
  withheld again if that falls below k. Nothing between 1 and k - 1 is ever shown.

What follows from protected counts only (post-processing adds no disclosure): totals
are perturbed as cells of their own (a table's parts need not add up to its total,
by up to a few peers); Chao1 from protected S, f1, f2 (protected_chao1); rates per
100,000 from a protected count, with the Wilson interval widened by the noise
(protected_rate). Owners read exact counts; the analysis layer decides who is one.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from functools import cached_property

from swarmwatch.analysis.estimators import PER, Z95, Chao1, Rate, chao1, wilson_interval

#: Record keys are uniform in [0, M). 4096 columns make the table's probabilities exact
#: in sixteenths; a power of two makes the per-row column shuffle a cheap affine map.
RECORD_KEY_MODULUS = 4096
#: The largest perturbation, either way: a published count is within 3 of the truth.
BOUND = 3
#: Relative weights of -3..3: a discrete triangle, mean 0, variance 2.5, P(0) = 1/4.
TRIANGULAR_WEIGHTS = (1, 2, 3, 4, 3, 2, 1)
#: Rows with a layout of their own; larger counts reuse them cyclically.
TABLE_ROWS = 1024
#: Names the table's row layouts (BLAKE2b personalisation): change it and every noise changes.
_ROW_SEED = b"sw-cellkey-v1"


def new_record_key() -> int:
    """A peer's record key: drawn once, at the peer row's creation, and never changed."""
    return secrets.randbelow(RECORD_KEY_MODULUS)


def cell_key(record_key_sum: int, modulus: int = RECORD_KEY_MODULUS) -> int:
    return record_key_sum % modulus


@dataclass(frozen=True)
class PerturbationTable:
    """The fixed perturbation table; deterministic in (count, cell key), public by design.

    Its secrecy is not needed: the protection comes from the record keys, which only
    the database holds (and a database holder reads exact counts anyway).
    """

    modulus: int = RECORD_KEY_MODULUS
    weights: tuple[int, ...] = TRIANGULAR_WEIGHTS
    rows: int = TABLE_ROWS

    def __post_init__(self) -> None:
        if len(self.weights) % 2 != 1 or self.weights != self.weights[::-1]:
            raise ValueError("weights must be symmetric around 0 (zero-mean noise)")
        if self.modulus & (self.modulus - 1) or self.modulus % sum(self.weights):
            raise ValueError("modulus must be a power of two divisible by the weights' sum")

    @property
    def bound(self) -> int:
        return len(self.weights) // 2

    @cached_property
    def columns(self) -> tuple[int, ...]:
        """The perturbation of each column before a row's shuffle: -B..B, each repeated."""
        per_unit = self.modulus // sum(self.weights)
        out: list[int] = []
        for i, w in enumerate(self.weights):
            out += [i - self.bound] * (w * per_unit)
        return tuple(out)

    @property
    def variance(self) -> float:
        total = sum(self.weights)
        return sum(w * (i - self.bound) ** 2 for i, w in enumerate(self.weights)) / total

    @property
    def p_zero(self) -> float:
        """The chance a cell's perturbation is 0 (its count published exactly)."""
        return self.weights[self.bound] / sum(self.weights)

    def _row_map(self, n: int) -> tuple[int, int]:
        # An affine bijection of [0, M) per row (odd multiplier, M a power of two): every
        # row holds each perturbation the same number of times, in an order of its own.
        row = (n - 1) % self.rows
        digest = hashlib.blake2b(row.to_bytes(4, "big"), digest_size=8, person=_ROW_SEED)
        value = int.from_bytes(digest.digest(), "big")
        return (value | 1) % self.modulus, (value >> 32) % self.modulus

    def perturbation(self, n: int, record_key_sum: int) -> int:
        """The noise of a cell of n > 0 peers whose record keys sum to record_key_sum."""
        if n <= 0:
            return 0
        a, b = self._row_map(n)
        return self.columns[(a * cell_key(record_key_sum, self.modulus) + b) % self.modulus]

    def row(self, n: int) -> list[int]:
        """Row n of the table as it would be printed: the perturbation per cell key."""
        return [self.perturbation(n, ck) for ck in range(self.modulus)]

    def publish(self, n: int, record_key_sum: int, k: int) -> int | None:
        """The value anyone but an owner sees: 0, withheld (None), or n + p >= k."""
        if n < 0 or k < 1:
            raise ValueError("need n >= 0 and k >= 1")
        if n == 0:
            return 0
        if n < k:
            return None
        value = n + self.perturbation(n, record_key_sum)
        return value if value >= k else None

    def describe(self) -> dict[str, object]:
        """The method block's account of the noise: what a paper should quote."""
        return {
            "method": "cell-key perturbation (ABS TableBuilder)",
            "noise": f"integer in [-{self.bound}, {self.bound}], mean 0, "
            f"variance {self.variance:g}, P(exact) {self.p_zero:g}",
            "consistency": "the same set of peers always gets the same noise",
            "small_counts": "counts below k (and perturbed values below k) are withheld",
            "totals": "perturbed on their own: parts may not sum to a total exactly",
            "quote": f"published counts as given, ±{self.bound} peers; intervals include the noise",
        }


DEFAULT_TABLE = PerturbationTable()


def publish(
    n: int, record_key_sum: int, k: int, table: PerturbationTable = DEFAULT_TABLE
) -> int | None:
    return table.publish(n, record_key_sum, k)


def protected_chao1(observed: int | None, f1: int | None, f2: int | None) -> Chao1 | None:
    """Chao1 from protected S, f1, f2 only: withheld if any of them is.

    Independent noise can make f1 + f2 exceed S by a few peers; they are trimmed
    (f1 first) to S, post-processing that uses nothing but published values.
    """
    if observed is None or f1 is None or f2 is None:
        return None
    f2 = min(f2, observed)
    f1 = min(f1, observed - f2)
    return chao1(observed, f1, f2)


def protected_rate(
    count: int | None, population: int, table: PerturbationTable = DEFAULT_TABLE
) -> Rate | None:
    """Per 100,000 residents from a protected count; its 95 % interval includes the noise.

    The Wilson interval of the published count, widened on each side by z times the
    noise's standard deviation (in rate units): a reader cannot tell the noise from
    sampling error, so the interval must cover both.
    """
    if count is None or population <= 0:
        return None
    low, high = wilson_interval(min(count, population), population)
    spread = Z95 * math.sqrt(table.variance) / population
    return Rate(
        PER * count / population, PER * max(0.0, low - spread), PER * min(1.0, high + spread)
    )


__all__ = [
    "BOUND",
    "DEFAULT_TABLE",
    "RECORD_KEY_MODULUS",
    "TRIANGULAR_WEIGHTS",
    "PerturbationTable",
    "cell_key",
    "new_record_key",
    "protected_chao1",
    "protected_rate",
    "publish",
]
