"""The one exception tree of pyserving.

Every error that can reach a client carries a canonical status :class:`Code` (the gRPC /
``absl::Status`` codes TF Serving uses) and a message, and converts to the wire in exactly one
place each: :meth:`ServingError.to_http` for REST and :attr:`ServingError.grpc_code` for gRPC.

::

    ServingError (UNKNOWN)
     +-- CancelledError          CANCELLED            499
     +-- InvalidArgument         INVALID_ARGUMENT     400
     +-- DeadlineExceeded        DEADLINE_EXCEEDED    504
     +-- NotFound                NOT_FOUND            404
     +-- AlreadyExists           ALREADY_EXISTS       409
     +-- PermissionDenied        PERMISSION_DENIED    403
     +-- ResourceExhausted       RESOURCE_EXHAUSTED   429
     +-- FailedPrecondition      FAILED_PRECONDITION  400
     +-- Aborted                 ABORTED              409
     +-- OutOfRange              OUT_OF_RANGE         400
     +-- Unimplemented           UNIMPLEMENTED        501
     +-- Internal                INTERNAL             500
     +-- Unavailable             UNAVAILABLE          503
     +-- DataLoss                DATA_LOSS            500
     +-- Unauthenticated         UNAUTHENTICATED      401

Errors also travel as data (see :class:`pyserving.core.source.ServableData` and the model
status), so every error is an ordinary value that can be stored and re-raised.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar


class Code(enum.IntEnum):
    """Canonical status codes (same numbers as ``grpc.StatusCode`` / ``absl::StatusCode``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}


def http_status_for(code: Code) -> int:
    """The HTTP status TF Serving's REST front end uses for ``code`` (500 when unmapped)."""
    return _HTTP_STATUS.get(code, 500)


class ServingError(Exception):
    """Base of every pyserving error. ``code`` is the canonical status; ``message`` the text."""

    code: ClassVar[Code] = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def grpc_code(self) -> Any:
        """The ``grpc.StatusCode`` for this error (imported lazily: core never needs grpc)."""
        import grpc

        for status in grpc.StatusCode:
            if status.value[0] == int(self.code):
                return status
        return grpc.StatusCode.UNKNOWN

    def to_http(self) -> tuple[int, dict[str, str]]:
        """``(status, body)``: TF Serving's REST error form ``{"error": message}``."""
        return http_status_for(self.code), {"error": self.message}

    @staticmethod
    def from_code(code: Code, message: str) -> ServingError:
        """Build the subclass matching ``code`` (``ServingError`` itself for UNKNOWN)."""
        cls = _BY_CODE.get(code, ServingError)
        return cls(message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class CancelledError(ServingError):
    code = Code.CANCELLED


class InvalidArgument(ServingError):
    code = Code.INVALID_ARGUMENT


class DeadlineExceeded(ServingError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(ServingError):
    code = Code.NOT_FOUND


class AlreadyExists(ServingError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(ServingError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(ServingError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(ServingError):
    code = Code.FAILED_PRECONDITION


class Aborted(ServingError):
    code = Code.ABORTED


class OutOfRange(ServingError):
    code = Code.OUT_OF_RANGE


class Unimplemented(ServingError):
    code = Code.UNIMPLEMENTED


class Internal(ServingError):
    code = Code.INTERNAL


class Unavailable(ServingError):
    code = Code.UNAVAILABLE


class DataLoss(ServingError):
    code = Code.DATA_LOSS


class Unauthenticated(ServingError):
    code = Code.UNAUTHENTICATED


_BY_CODE: dict[Code, type[ServingError]] = {
    cls.code: cls
    for cls in (
        CancelledError,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
