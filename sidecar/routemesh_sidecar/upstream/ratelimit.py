"""A provider account's rate limits, as this sidecar's share of them.

A ModelBackend's `limits.requestsPerMinute` and `tokensPerMinute` are the provider account's,
shared by every pod that calls it. Each sidecar keeps to its share: the limit divided by the
number of sidecars in the namespace (which the operator tells each of them with shared health;
1 without an operator), over a sliding minute. Routing treats a backend whose share is used up
as saturated, so requests go to another target rather than to a 429; the time until the window
frees is the Retry-After when nothing else can serve.

Requests count when they are sent, tokens when the answer says how many it used (a provider
counts both, prompt and completion). Time comes in as arguments; nothing here sleeps or sends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0


@dataclass
class AccountLimiter:
    """Requests and tokens of one provider account in the last minute, against this share."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    peers: Callable[[], int] = lambda: 1  # sidecars sharing the account, this one included
    _requests: deque[float] = field(default_factory=deque)
    _tokens: deque[tuple[float, int]] = field(default_factory=deque)
    _token_sum: int = 0

    def has_room(self, now: float) -> bool:
        """Whether one more request fits this sidecar's share of the minute."""
        self._expire(now)
        share = max(1, self.peers())
        if self.requests_per_minute is not None and (
            len(self._requests) + 1 > max(1.0, self.requests_per_minute / share)
        ):
            return False
        return self.tokens_per_minute is None or self._token_sum < max(
            1.0, self.tokens_per_minute / share
        )

    def record_request(self, now: float) -> None:
        """A request was sent to the account."""
        if self.requests_per_minute is not None:
            self._requests.append(now)

    def record_tokens(self, now: float, tokens: int) -> None:
        """An answer used this many tokens (prompt and completion)."""
        if self.tokens_per_minute is not None and tokens > 0:
            self._tokens.append((now, tokens))
            self._token_sum += tokens

    def seconds_until_room(self, now: float) -> float:
        """How long until the oldest counted request or tokens leave the window."""
        self._expire(now)
        oldest = [q[0] for q in (self._requests,) if q] + [t[0][0] for t in (self._tokens,) if t]
        return max(0.0, min(oldest) + WINDOW_SECONDS - now) if oldest else 0.0

    def _expire(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        while self._requests and self._requests[0] <= horizon:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._token_sum -= self._tokens.popleft()[1]
