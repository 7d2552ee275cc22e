"""What a gRPC method is, whatever transport carries it, and how its errors become a status.

A service (``service.py``, ``v2/grpc.py``, the profiler) describes each method as one of:

* :class:`Unary`: a blocking function ``run(request, call) -> response``; a transport runs
  it on a worker thread through :func:`run_unary` (deadline checked before and after).
* :class:`Inference` (Predict, V2's ModelInfer): ``start(request)`` decodes and runs the
  request, or queues it for its batch, returning a future; ``answer(result)`` builds the
  response from the future's result. A transport may call both on its event loop for
  small requests to fast models, as nothing in them waits.

Errors are pyserving's (:mod:`pyserving.errors`) and become a gRPC status in one place,
:func:`status_of`: a ``ServingError`` keeps its code and message (cut after
:data:`ERROR_MESSAGE_LIMIT` characters, as TF Serving's ``ToGRPCStatus``), anything else is
logged and is ``INTERNAL``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from pyserving.errors import CancelledError, DeadlineExceeded, ServingError
from pyserving.server.call_costs import CallCosts

log = logging.getLogger(__name__)

#: TF Serving cuts status messages after this many characters (``grpc_status_util.cc``).
ERROR_MESSAGE_LIMIT = 1024
#: Inference requests up to this size (bytes) may be parsed and started on a transport's
#: event loop (tens of microseconds); larger ones are parsed on a worker thread, so a big
#: request never stalls the loop.
INLINE_REQUEST_BYTES = 64 * 1024


class Call:
    """One call's deadline and cancellation, as its transport reports them.

    ``deadline``: on ``clock`` (default :func:`time.monotonic`), None for none. The transport
    calls :meth:`cancel` when the client resets the call or goes away; that also cancels
    :attr:`future` (a request queued for its batch leaves it). Thread-safe: the flag and the
    future are single assignments.
    """

    __slots__ = ("cancelled", "clock", "deadline", "future")

    def __init__(
        self, deadline: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.deadline = deadline
        self.clock = clock
        self.cancelled = False
        self.future: concurrent.futures.Future[Any] | None = None

    @classmethod
    def with_timeout(cls, seconds: float | None) -> Call:
        """A call ending ``seconds`` from now (None: no deadline)."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline (negative once passed); None without one."""
        return None if self.deadline is None else self.deadline - self.clock()

    def expired(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def check(self) -> None:
        """Raise ``DeadlineExceeded`` once the deadline has passed, ``CancelledError`` once
        the call is cancelled."""
        if self.expired():
            raise DeadlineExceeded("Deadline Exceeded")
        if self.cancelled:
            raise CancelledError("Cancelled")

    def cancel(self) -> None:
        self.cancelled = True
        future = self.future
        if future is not None:
            future.cancel()


@dataclass(frozen=True)
class Unary:
    """A method answered by a blocking function (see the module docstring)."""

    request_type: Any
    run: Callable[[Any, Call], Any]


@dataclass(frozen=True)
class Inference:
    """A method served as Predict is (see the module docstring). ``model(request)`` names
    the model a request is for (the key a transport keeps call costs under)."""

    request_type: Any
    model: Callable[[Any], str]
    start: Callable[[Any], concurrent.futures.Future[Any]]
    answer: Callable[[Any], Any]


Method = Unary | Inference


def start_inference(
    method: Inference, request: Any, call: Call, costs: CallCosts, on_loop: bool = False
) -> concurrent.futures.Future[Any]:
    """Start ``request`` (``method.start``), make it the call's future (cancelled at once
    if the call is), and record how long a successful start took for its model in
    ``costs`` (one that only queued the request for its batch counts as free; failures
    are not recorded: a fast failure says nothing of the model's cost). A call whose
    deadline has passed, or that is cancelled, is not started (:meth:`Call.check` raises).
    """
    call.check()
    timer = costs.timer
    start = timer()
    future = method.start(request)
    call.future = future
    if call.cancelled:
        future.cancel()  # reset while it started: a queued request leaves its batch
    if future.done():
        if future.cancelled() or future.exception() is not None:
            return future
        elapsed = timer() - start
    else:
        elapsed = 0.0  # only queued for its batch
    costs.record(method.model(request), elapsed, on_loop=on_loop)
    return future


def run_unary(method: Unary, request: Any, call: Call) -> Any:
    """``method.run(request, call)`` with the call's deadline checked before and after (a
    call that expires meanwhile gets no answer but ``DEADLINE_EXCEEDED``)."""
    call.check()
    response = method.run(request, call)
    call.check()
    return response


def run_inference(method: Inference, request: Any, call: Call) -> Any:
    """An :class:`Inference` method run to its answer, blocking (deadline checked before
    the run and after it)."""
    call.check()
    future = method.start(request)
    call.future = future
    result = future.result()
    call.check()
    return method.answer(result)


def truncate(message: str) -> str:
    """``message`` cut as TF Serving cuts status messages."""
    if len(message) > ERROR_MESSAGE_LIMIT:
        return message[:ERROR_MESSAGE_LIMIT] + "...TRUNCATED"
    return message


def status_of(error: BaseException, path: str = "") -> tuple[grpc.StatusCode, str]:
    """The gRPC status a call of ``path`` that failed with ``error`` ends with."""
    if isinstance(error, ServingError):
        log.debug("%s failed: %s", path, error.message)
        return error.grpc_code, truncate(error.message)
    if isinstance(error, concurrent.futures.CancelledError):
        return grpc.StatusCode.CANCELLED, "Cancelled"
    log.error("%s failed with an unexpected error", path, exc_info=error)
    return grpc.StatusCode.INTERNAL, truncate(f"{type(error).__name__}: {error}")


__all__ = [
    "ERROR_MESSAGE_LIMIT",
    "INLINE_REQUEST_BYTES",
    "Call",
    "Inference",
    "Method",
    "Unary",
    "run_inference",
    "run_unary",
    "start_inference",
    "status_of",
    "truncate",
]
