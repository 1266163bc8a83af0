"""Server-sent events: an incremental parser and an encoder.

The upstream stream relay feeds the parser whatever byte chunks the network delivers (they may
split lines, events or UTF-8 characters) and gets whole events back. It sits on the streaming hot
path, so it splits on line ends in bulk rather than looking at bytes one by one. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SSEEvent:
    """One event: its name (None when the stream gave none) and its data lines, newline-joined."""

    event: str | None
    data: str


class SSEParser:
    """Turns byte chunks into events; keeps the unfinished tail for the next chunk."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse a chunk; return the events it completed."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A trailing \r may be the first half of \r\n: keep it until the next chunk.
            keep_cr = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n")
            if keep_cr:
                buffer = buffer[:-1].replace(b"\r", b"\n") + b"\r"
            else:
                buffer = buffer.replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: an event without its blank line is still dispatched."""
        events = self.feed(b"\n") if self._buffer else []
        if self._data:
            events.append(SSEEvent(self._event, "\n".join(self._data)))
        self._event, self._data = None, []
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            if not self._data and self._event is None:
                return None
            event = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def encode_event(data: str, event: str | None = None) -> bytes:
    """One event in wire form, ending with the blank line that dispatches it."""
    head = f"event: {event}\n" if event else ""
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return (head + body + "\n").encode()
