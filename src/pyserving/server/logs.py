"""Logging: human-readable text (default) or one JSON object per line (``--log_format=json``),
and one structured record per servable version transition.

Each transition record carries ``event="servable_transition"``, ``model``, ``version``,
``state``, ``duration_s`` (the load or unload time, when it ended one), ``cause`` and
``error`` (the failure message, when there is one); in JSON logs these are top-level keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from pyserving.core.monitor import ServableState

log = logging.getLogger("pyserving.transitions")

_FIELDS = ("event", "model", "version", "state", "duration_s", "cause", "error")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, any transition fields, and
    ``worker`` (its index) in a worker of ``--num_workers``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            out["worker"] = self.worker
        for key in _FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(log_format: str = "text", worker: int | None = None) -> None:
    """Send logs to stderr in ``text`` or ``json`` form (idempotent); a worker of
    ``--num_workers`` marks its lines with its index (``worker-1``, or a ``worker`` key)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        where = f"worker-{worker} " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s.%(msecs)03d %(levelname).1s {where}%(name)s] %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def log_transition(state: ServableState) -> None:
    """Event-bus subscriber: one record per version state change."""
    error = state.error.message if state.error is not None else None
    text = f"Servable {state.id} -> {state.state.value}"
    if state.duration is not None:
        text += f" after {state.duration:.3f}s"
    if state.cause:
        text += f" ({state.cause})"
    if error:
        text += f": {error}"
    log.log(
        logging.ERROR if error else logging.INFO,
        text,
        extra={
            "event": "servable_transition",
            "model": state.id.name,
            "version": state.id.version,
            "state": state.state.value,
            "duration_s": state.duration,
            "cause": state.cause,
            "error": error,
        },
    )
