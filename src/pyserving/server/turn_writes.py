"""Answers written together at the end of an event loop's turn.

On one turn the loop reads every connection that has bytes and runs the requests they
complete; a fast model's answer is ready within the same turn. Written at once, each answer
to a client waiting on many connections (a load balancer, a client pool, a benchmark) wakes
that client for one answer; the wake-up is paid by the writer (on loopback, ~20 us of
kernel time per ``send``, more than the HTTP/1.1 work of a small request). Written back to
back after the turn's requests have all run, the client is woken once and finds the rest
already there when it looks again. The cost is that the turn's first answer waits for the
turn's last request to run (the requests of one turn are what the loop had read together).

:class:`TurnWrites` keeps the connections with output queued and flushes them all from one
``loop.call_soon`` callback, which runs after the callbacks of the reads of this turn. A
connection decides what to queue and when a write cannot wait (a single open connection
has nothing to be written with).

Threading: only on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Flushable(Protocol):
    """A connection with output queued."""

    def flush(self) -> None:
        """Write what is queued (called once per :meth:`TurnWrites.add`)."""


class TurnWrites:
    """Connections to flush at the end of ``loop``'s current turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Flushable] = []

    def add(self, connection: Flushable) -> None:
        """Flush ``connection`` at the end of this turn (the caller adds it once per batch
        of output: while it is queued, more output joins the same flush)."""
        if not self._pending:
            self._loop.call_soon(self.flush_all)
        self._pending.append(connection)

    def flush_all(self) -> None:
        """Flush every queued connection, in the order they were added."""
        pending = self._pending
        self._pending = []
        for connection in pending:
            try:
                connection.flush()
            except Exception:  # pragma: no cover - a bug must not keep the others unwritten
                log.exception("Writing a connection's answers failed")
