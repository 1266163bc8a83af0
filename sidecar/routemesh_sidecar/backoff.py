"""Exponential backoff with full jitter, in one place for every loop that retries.

The attempt loop (`upstream.retry`) and the operator watches (`discovery.watch`,
`discovery.shared_health`) wait this way between tries. Randomness is passed in, so that tests
draw from a seeded `random.Random`. Pure: it computes a wait and never sleeps.
"""

from __future__ import annotations

import random


def capped_exponential(base: float, cap: float, exponent: int) -> float:
    """`base` doubled `exponent` times, never above `cap`."""
    return min(cap, base * 2.0**exponent)


def full_jitter(base: float, cap: float, exponent: int, rng: random.Random) -> float:
    """A uniform draw up to the capped exponential wait.

    Full jitter spreads the retries of many clients that failed together, so that they do not
    arrive in step (a thundering herd after an outage).
    """
    return rng.uniform(0.0, capped_exponential(base, cap, exponent))
