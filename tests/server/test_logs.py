"""Structured transition logs through the real manager, rendered as JSON lines."""

from __future__ import annotations

import json
import logging

import pytest

from pyserving.core.manager import AspiredVersionsManager, ManagerOptions
from pyserving.core.source import ServableData, ServableId
from pyserving.server.logs import JsonFormatter, configure_logging, log_transition
from tests.core.fakes import FakeLoader


def test_every_transition_is_one_structured_record(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="pyserving.transitions"),
        AspiredVersionsManager(ManagerOptions(run_manager_loop=False, max_num_load_retries=0)) as m,
    ):
        m.bus.subscribe(log_transition)
        callback = m.get_aspired_versions_callback()
        callback("m", [ServableData(ServableId("m", 1), FakeLoader("m", 1))])
        m.settle()
        callback("m", [ServableData(ServableId("m", 2), FakeLoader("m", 2, fail_times=9))])
        m.settle()
    records = [r for r in caplog.records if getattr(r, "event", None) == "servable_transition"]
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    v1 = [(x["state"], x["cause"]) for x in lines if x["version"] == 1]
    assert v1 == [
        ("START", "aspired by source"),
        ("LOADING", "policy: load the newest aspired version"),
        ("AVAILABLE", "loaded"),
        ("UNLOADING", "policy: unload a version that is no longer aspired"),
        ("END", "unloaded"),
    ]
    available = next(x for x in lines if x["version"] == 1 and x["state"] == "AVAILABLE")
    assert available["duration_s"] is not None and available["model"] == "m"
    failed = next(x for x in lines if x["version"] == 2 and x["state"] == "END")
    assert failed["level"] == "ERROR" and "injected failure" in failed["error"]


def test_a_worker_marks_its_lines() -> None:
    """With --num_workers, each worker's records say which worker wrote them."""
    record = logging.LogRecord("pyserving", logging.INFO, __file__, 1, "hello", None, None)
    assert json.loads(JsonFormatter(1).format(record))["worker"] == 1
    assert "worker" not in json.loads(JsonFormatter().format(record))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("text", 3)
        assert root.handlers[0].format(record).endswith(" I worker-3 pyserving] hello")
        configure_logging("text")
        assert root.handlers[0].format(record).endswith(" I pyserving] hello")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
