"""Server-Sent Events, read without I/O: lines in, `wire.Transition`s out (for ``Client.stream``).

`Events` keeps the last event id seen, so that both clients reconnect with ``Last-Event-ID``
from where they were: the collector then sends what follows, without a gap or a repeat.
"""

from __future__ import annotations

import msgspec

from . import wire

__all__ = ["RECONNECT", "Events"]

RECONNECT = 1.0  # seconds before reconnecting, unless the server's `retry:` says otherwise
READ_TIMEOUT = 60.0  # seconds without a byte (heartbeats come every ~15 s) before reconnecting

_decode = msgspec.json.Decoder(wire.Transition).decode


class Events:
    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self.retry = RECONNECT
        self._data: list[str] = []
        self._id: str | None = None

    def headers(self) -> dict[str, str]:
        """What a (re)connection sends."""
        out = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            out["Last-Event-ID"] = self.last_id
        return out

    def line(self, line: str) -> wire.Transition | None:
        """Feed one line (without its end); a transition when the line completes one."""
        if line == "":
            data, self._data = self._data, []
            event_id, self._id = self._id, None
            if not data:
                return None
            transition = _decode("\n".join(data))
            self.last_id = event_id if event_id is not None else transition.id
            return transition
        if line.startswith(":"):
            return None  # a comment: the heartbeat
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        elif name == "retry" and value.isdecimal():
            self.retry = int(value) / 1000
        return None
