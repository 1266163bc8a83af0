"""Network faults for tests: a refused port, a blackholed connect, a server that never answers.

The attempt code must classify each correctly (connect_error or timeout) and fall back in time.
These make the faults real, on 127.0.0.1, without root or packet filters. Test support only.
"""

from __future__ import annotations

import contextlib
import socket
from types import TracebackType


def refused_url() -> str:
    """An origin where nothing listens: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Blackhole:
    """An origin whose TCP connect never completes, so a client's connect timeout fires.

    A listening socket with a backlog of zero whose accept queue is already full: Linux drops
    further SYNs silently instead of refusing them, so the connecting side keeps waiting.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._fillers: list[socket.socket] = []
        self.url = ""

    def __enter__(self) -> Blackhole:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        port = self._listener.getsockname()[1]
        # Fill the accept queue; the connects that fit complete at once, the next would block.
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            self._fillers.append(filler)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for filler in self._fillers:
            filler.close()
        self._listener.close()
