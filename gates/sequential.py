"""Anytime-valid tests of a rate: a one-sided Beta-mixture sequential probability ratio test.

A rule watches a stream of yes/no outcomes (a request failed, a shadowed
record was labelled differently, ...) whose rate p it holds to `tolerated`.
After n outcomes with k yes, the evidence against "p ≤ tolerated" is the
likelihood ratio of the data under a Beta prior spread over the rates above
`tolerated` (centred on the effect the rule must catch) to the data under
`tolerated` itself:

    M = ∫ p^k (1-p)^(n-k) dπ(p) / (tolerated^k (1-tolerated)^(n-k)),  π on (tolerated, 1]

For any true rate at or below `tolerated`, M is a nonnegative supermartingale
starting at 1, so by Ville's inequality P(M ever reaches 1/α) ≤ α: the rule
may look after every poll, as often as it likes, and still raises a false
alarm with probability at most α over all its looks. That is the property a
rollout and a bake need, since both look again at every poll.

The planned sample size is the smallest n at which a rate of
`tolerated + effect` makes M reach 1/α with probability `power`, so that the
effect a rule names is caught that often by the time the plan is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from scipy import special, stats

# Prior spread: its standard deviation is about the effect, so rates near tolerated + effect carry the weight.
MIN_CONCENTRATION = 2.0
MAX_PLAN = 10_000_000


@dataclass(frozen=True)
class RateTest:
    """H0: the rate is at most `tolerated`; the rule must catch `tolerated + effect`, at level `alpha`."""

    tolerated: float
    effect: float
    alpha: float

    def __post_init__(self) -> None:
        if not 0 <= self.tolerated < 1 or not 0 < self.effect <= 1 - self.tolerated or not 0 < self.alpha < 1:
            raise ValueError(f"not a rate test: tolerated {self.tolerated}, effect {self.effect}, α {self.alpha}")

    @property
    def prior(self) -> tuple[float, float]:
        """The Beta(a, b) the mixture uses, before truncation to (tolerated, 1]."""
        mean = self.tolerated + self.effect
        concentration = max(MIN_CONCENTRATION, mean * (1 - mean) / self.effect**2 - 1)
        return mean * concentration, (1 - mean) * concentration

    def log_evidence(self, yes: float, n: float) -> float:
        """The log of M after `n` outcomes of which `yes` were yes (counts may be fractional sums of counters)."""
        if n <= 0:
            return 0.0
        yes = min(max(yes, 0.0), n)
        a, b = self.prior
        p0 = self.tolerated
        tail = _log_upper_tail(a + yes, b + n - yes, p0) - _log_upper_tail(a, b, p0)
        mixture = special.betaln(a + yes, b + n - yes) - special.betaln(a, b) + tail
        null = (yes * math.log(p0) if yes else 0.0) + ((n - yes) * math.log1p(-p0) if n - yes else 0.0)
        return float(mixture - null)

    def rejects(self, yes: float, n: float) -> bool:
        """Whether the evidence has reached 1/α: the rate is above `tolerated`, with confidence 1 - α."""
        return self.log_evidence(yes, n) >= math.log(1 / self.alpha)

    def least_yes(self, n: int) -> int | None:
        """The fewest yes outcomes out of `n` that reject (None: none do)."""
        if not self.rejects(n, n):
            return None
        low, high = 0, n  # evidence grows with yes for a fixed n
        while low < high:
            middle = (low + high) // 2
            if self.rejects(middle, n):
                high = middle
            else:
                low = middle + 1
        return low

    def planned(self, power: float) -> int:
        """The outcomes after which a rate of tolerated + effect is caught with probability `power`."""
        return _planned(self.tolerated, self.effect, self.alpha, power)


@lru_cache(maxsize=256)
def _planned(tolerated: float, effect: float, alpha: float, power: float) -> int:
    test = RateTest(tolerated, effect, alpha)
    worse = tolerated + effect

    def caught(n: int) -> bool:
        needed = test.least_yes(n)
        return needed is not None and float(stats.binom.sf(needed - 1, n, worse)) >= power

    high = 1
    while not caught(high):
        high *= 2
        if high > MAX_PLAN:
            raise ValueError(f"an effect of {effect} over {tolerated} needs more than {MAX_PLAN} outcomes")
    low = high // 2 + 1
    while low < high:
        middle = (low + high) // 2
        if caught(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _log_upper_tail(a: float, b: float, x: float) -> float:
    """The log of P(Beta(a, b) > x), computed from the lower tail of the mirrored Beta."""
    if x <= 0:
        return 0.0
    value = float(special.betainc(b, a, 1 - x))
    return math.log(value) if value > 0 else -math.inf


@dataclass(frozen=True)
class ShareTest:
    """A paired comparison: of the events both versions had in one window, the candidate's share.

    When the candidate takes a share w of the counted requests, and its rate
    of an event is r times production's, its share of the events is
    q = w·r / (w·r + 1 - w): the same traffic, the same window, only the
    version differs. So "r at most `tolerated_ratio`" is a rate test of q on
    the stream of events, exact whatever production's own rate is, and it
    catches `effect_ratio`. `two_sided` also tests r at most 1/`tolerated_ratio`
    from below (a candidate with far fewer positives has a shifted score too),
    each side at α/2.
    """

    tolerated_ratio: float
    effect_ratio: float
    alpha: float
    two_sided: bool = False

    def tests(self, share: float) -> list[tuple[str, RateTest]]:
        """(direction, test of the candidate's share of events) for a candidate answering `share` of requests."""
        alpha = self.alpha / 2 if self.two_sided else self.alpha
        out = [("above", _share_test(share, self.tolerated_ratio, self.effect_ratio, alpha))]
        if self.two_sided:  # fewer: production's share of the events, by the same arithmetic
            out.append(("below", _share_test(1 - share, self.tolerated_ratio, self.effect_ratio, alpha)))
        return out


def share_of_events(share: float, ratio: float) -> float:
    """The candidate's share of events when it answers `share` of requests at `ratio` times production's rate."""
    return share * ratio / (share * ratio + 1 - share)


def _share_test(share: float, tolerated_ratio: float, effect_ratio: float, alpha: float) -> RateTest:
    q0 = share_of_events(share, tolerated_ratio)
    q1 = share_of_events(share, effect_ratio)
    return RateTest(q0, q1 - q0, alpha)
