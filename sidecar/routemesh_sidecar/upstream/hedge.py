"""Hedged attempts: the next target raced against a slow one, and the first answer wins.

The attempt loop (`upstream.executor`) calls `race` for a route with hedging, with a way to start
the attempts on one target of the plan (its retries included). When the delay passes and no
attempt has answered (for a stream, sent its first event), `race` starts the next spare target
beside the ones in flight, up to the route's extra attempts. The first to answer wins; every
other attempt is cancelled at once, which closes its upstream connection, so that the provider
stops generating and nothing more is billed. An attempt that fails does not end the race while
another is in flight.

Time comes from the injected `sleep`, so that tests drive the hedge timer by hand. It never
picks targets, classifies errors or records spans: the callbacks do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class RaceLost(Exception):
    """Every attempt of the race failed; `failures` holds each target's exception, in order."""

    def __init__(self, failures: list[tuple[int, BaseException]]) -> None:
        super().__init__(f"{len(failures)} hedged attempts failed")
        self.failures = failures


@dataclass
class Race(Generic[T]):
    """One hedged race over a plan's targets, known by their index in the plan."""

    start: Callable[[int, bool], Awaitable[T]]  # index, is_hedge: the target's attempts
    sleep: Sleep
    delay: Callable[[], float]  # how long to wait before the next hedge
    may_hedge: Callable[[int], bool]  # whether that target may be hedged to now (budgets)
    on_hedge: Callable[[int, float], None]  # a hedge started, after that delay
    discard: Callable[[T], None]  # an answer that lost (two finished together): release it
    max_extra: int

    async def run(self, first: int, spare: list[int]) -> tuple[int, T]:
        """Race from `first`, hedging to `spare` in order; the winner's index and answer."""
        running: dict[asyncio.Future[T], int] = {self._launch(first, hedge=False): first}
        failures: list[tuple[int, BaseException]] = []
        spare = list(spare)
        extra = 0
        timer: asyncio.Future[None] | None = None
        timer_delay = 0.0
        try:
            while running:
                if timer is None and extra < self.max_extra and spare:
                    wait = self.delay()
                    timer = asyncio.ensure_future(self.sleep(wait))
                    timer_delay = wait
                waiting: set[asyncio.Future[Any]] = set(running)
                if timer is not None:
                    waiting.add(timer)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if timer is not None and timer in done:
                    timer = None
                    index = self._next(spare)
                    if index is not None:
                        extra += 1
                        self.on_hedge(index, timer_delay)
                        running[self._launch(index, hedge=True)] = index
                finished = sorted((running[f], f) for f in running if f in done)
                for index, future in finished:
                    del running[future]
                    error = future.exception()
                    if error is None:
                        return index, future.result()
                    failures.append((index, error))
            raise RaceLost(failures)
        finally:
            if timer is not None:
                timer.cancel()
            await self._cancel(running)

    def _launch(self, index: int, *, hedge: bool) -> asyncio.Future[T]:
        return asyncio.ensure_future(self.start(index, hedge))

    def _next(self, spare: list[int]) -> int | None:
        """The next spare target the budgets allow a hedge to; none left stops hedging."""
        while spare:
            index = spare.pop(0)
            if self.may_hedge(index):
                return index
            spare.clear()  # a budget said no: later hedges would only cost more
        return None

    async def _cancel(self, running: dict[asyncio.Future[T], int]) -> None:
        """Cancel the losers and wait for them to clean up; release answers that came anyway."""
        for future in running:
            future.cancel()
        # gather returns the losers' exceptions (their cancellation among them) as values; a
        # cancellation of the request itself still propagates from here.
        for answer in await asyncio.gather(*running, return_exceptions=True):
            if not isinstance(answer, BaseException):
                self.discard(answer)
