"""The ``--num_workers`` supervisor with stand-in workers: small Python processes that
follow a script (serve, fail, exit) instead of loading models, so that start failures,
restarts and stopping are exercised in a second."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Any

import pytest

from pyserving.core.loader import ResourceEstimate
from pyserving.server.workers import (
    Supervisor,
    SupervisorOptions,
    check_memory_budget,
    describe_exit,
    restart_delay,
)

#: A stand-in worker. argv: marks directory, then a JSON {index: [action per incarnation]}.
#: Actions: "fail-N" exits N before serving; "serve-exit-N" tells the supervisor it serves,
#: then exits N; "serve" serves until SIGTERM, then exits 0 ("serve-N": exits N);
#: "serve-stop" serves and, once every worker serves, sends the supervisor SIGTERM.
STAND_IN = r"""
import json, os, pathlib, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
index = os.environ["PYSERVING_WORKER"]
marks = pathlib.Path(sys.argv[1])
script = json.loads(sys.argv[2])
incarnation = len(list(marks.glob(f"{index}-*")))
(marks / f"{index}-{incarnation}").touch()
action = script[index][incarnation]
if action.startswith("fail-"):
    sys.exit(int(action[5:]))
fd = int(os.environ["PYSERVING_WORKER_READY_FD"])
os.write(fd, b"1")
os.close(fd)
(marks / f"served-{index}").touch()
if action.startswith("serve-exit-"):
    sys.exit(int(action[11:]))
if action == "serve-stop":
    while len(list(marks.glob("served-*"))) < len(script):
        time.sleep(0.01)
    os.kill(int(os.environ["PYSERVING_SUPERVISOR_PID"]), signal.SIGTERM)
signal.sigwait({signal.SIGTERM})
sys.exit(int(action[6:]) if action.startswith("serve-") and action[6:].isdigit() else 0)
"""


def supervisor(tmp_path: pathlib.Path, script: dict[str, list[str]], **options: Any) -> int:
    marks = tmp_path / "marks"
    marks.mkdir()
    command = (sys.executable, "-c", STAND_IN, str(marks), json.dumps(script))
    return Supervisor(
        SupervisorOptions(num_workers=len(script), command=command, env={}, **options)
    ).run()


def test_workers_serve_until_sigterm_then_exit_0(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pyserving.workers")
    assert supervisor(tmp_path, {"0": ["serve"], "1": ["serve-stop"]}) == 0
    assert "Received signal 15: stopping 2 workers" in caplog.text
    assert caplog.text.count("exited with status 0") == 2


def test_a_worker_failing_at_start_fails_the_server(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert supervisor(tmp_path, {"0": ["serve"], "1": ["fail-3"]}) == 3
    assert "exited with status 3 before serving; stopping the server" in caplog.text
    # Worker 1 started once and was not restarted; worker 0 may have been stopped before it
    # got as far as leaving its mark, but it was never started twice either.
    marks = sorted(p.name for p in (tmp_path / "marks").glob("?-*"))
    assert "1-0" in marks and set(marks) <= {"0-0", "1-0"}, marks


def test_a_worker_that_dies_is_restarted(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = {"0": ["serve-exit-7", "fail-9", "serve-stop"], "1": ["serve"]}
    # It had served long enough (min_uptime 0): restarted at once; then it dies before
    # serving: restarted after restart_delay(1).
    assert supervisor(tmp_path, script, min_uptime=0.0) == 0
    assert "exited with status 7; restarting it\n" in caplog.text
    assert "exited with status 9; restarting it in 0.5s" in caplog.text
    assert sorted(p.name for p in (tmp_path / "marks").glob("?-*")) == [
        "0-0",
        "0-1",
        "0-2",
        "1-0",
    ]


def test_a_worker_failing_its_drain_makes_the_exit_status_1(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert supervisor(tmp_path, {"0": ["serve-stop"], "1": ["serve-5"]}) == 1
    assert "Worker 1 (pid" in caplog.text and "exited with status 5" in caplog.text


@pytest.mark.parametrize(
    ("early_deaths", "delay"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (50, 30.0)],
)
def test_restart_delay_doubles_up_to_a_cap(early_deaths: int, delay: float) -> None:
    assert restart_delay(early_deaths) == delay


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(-9) == "was killed by SIGKILL"


@pytest.mark.parametrize(
    ("workers", "budget", "refused"),
    [(2, 0, False), (2, 200, False), (2, 199, True), (3, 299, True), (1, 100, False)],
)
def test_memory_budget_counts_n_copies(workers: int, budget: int, refused: bool) -> None:
    estimates = {"a version 1": ResourceEstimate(60), "b version 3": ResourceEstimate(40)}
    message = check_memory_budget(estimates, workers, budget)
    assert (message is not None) == refused
    if message is not None:
        assert f"{workers} x 100 = {workers * 100} bytes" in message
        assert "a version 1: 60, b version 3: 40" in message
