"""The ``--num_workers`` supervisor with stand-in workers: small Python processes that
follow a script (serve, fail, exit) instead of loading models, so that start failures,
restarts and stopping are exercised in a second."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from pyserving.core.loader import ResourceEstimate
from pyserving.server.workers import (
    STATE_DIR_PREFIX,
    STATE_LOCK_FILE,
    Supervisor,
    SupervisorOptions,
    check_memory_budget,
    describe_exit,
    hold_state_dir,
    remove_stale_state_dirs,
    restart_delay,
)

#: A stand-in worker. argv: marks directory, then a JSON {index: [action per incarnation]}.
#: Actions: "fail-N" exits N before serving; "serve-exit-N" tells the supervisor it serves,
#: then exits N; "serve" serves until SIGTERM, then exits 0 ("serve-N": exits N);
#: "serve-stop" serves and, once every worker serves, sends the supervisor SIGTERM
#: ("serve-stop-twice": two); "stuck" serves and never ends its drain. Each incarnation
#: writes its process id and rejoin variables to its mark.
STAND_IN = r"""
import json, os, pathlib, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
index = os.environ["PYSERVING_WORKER"]
marks = pathlib.Path(sys.argv[1])
script = json.loads(sys.argv[2])
incarnation = len(list(marks.glob(f"{index}-*")))
names = ("PYSERVING_WORKER_PROCESS_ID", "PYSERVING_WORKER_REJOIN")
(marks / f"{index}-{incarnation}").write_text(json.dumps([os.environ.get(n) for n in names]))
action = script[index][incarnation]
if action.startswith("fail-"):
    sys.exit(int(action[5:]))
fd = int(os.environ["PYSERVING_WORKER_READY_FD"])
os.write(fd, b"1")
os.close(fd)
(marks / f"served-{index}").touch()
if action.startswith("serve-exit-"):
    sys.exit(int(action[11:]))
if action in ("serve-stop", "serve-stop-twice"):
    while len(list(marks.glob("served-*"))) < len(script):
        time.sleep(0.01)
    os.kill(int(os.environ["PYSERVING_SUPERVISOR_PID"]), signal.SIGTERM)
    if action == "serve-stop-twice":
        # Once the supervisor has acted on the first (it sends this worker SIGTERM): two
        # signals sent back to back may be delivered as one.
        signal.sigwait({signal.SIGTERM})
        os.kill(int(os.environ["PYSERVING_SUPERVISOR_PID"]), signal.SIGTERM)
        sys.exit(0)
if action == "stuck":  # a drain that never ends: SIGTERM stays blocked
    time.sleep(3600)
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
    # Each incarnation names its metric files uniquely; the restarted ones rejoin.
    marks = tmp_path / "marks"
    assert [json.loads((marks / f"0-{i}").read_text()) for i in range(3)] == [
        ["0-1", None],
        ["0-2", "1"],
        ["0-3", "1"],
    ]
    assert json.loads((marks / "1-0").read_text()) == ["1-1", None]


def test_a_second_signal_stops_waiting_for_the_drain(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose drain does not end: a second SIGTERM kills the workers at once
    instead of waiting for the stop timeout."""
    script = {"0": ["stuck"], "1": ["serve-stop-twice"]}
    assert supervisor(tmp_path, script, stop_timeout=120.0) == 1
    assert "Received a second signal: killing the workers" in caplog.text
    assert "still running" not in caplog.text


def test_stale_state_directories_are_removed(tmp_path: pathlib.Path) -> None:
    """Directories of supervisors that no longer run (SIGKILL skips their clean-up) are
    removed at the next start; those of running ones and other files are kept."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{STATE_DIR_PREFIX}{dead_pid}-abc"
    (stale / "metrics").mkdir(parents=True)
    (stale / "metrics" / "counter_0-1.db").write_bytes(b"x")
    live = tmp_path / f"{STATE_DIR_PREFIX}{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / "pyserving-something-else"
    other.mkdir()
    # With a lock file (this version's): removed only when nobody holds it, whatever the
    # pid in the name says (another container sharing the directory has other pids).
    held = tmp_path / f"{STATE_DIR_PREFIX}{dead_pid}-held"
    held.mkdir()
    holder = hold_state_dir(str(held))
    unheld = tmp_path / f"{STATE_DIR_PREFIX}{os.getpid()}-unheld"
    unheld.mkdir()
    (unheld / STATE_LOCK_FILE).touch()
    huge = tmp_path / f"{STATE_DIR_PREFIX}{'9' * 30}-x"  # no such pid: not a crash
    huge.mkdir()
    assert sorted(remove_stale_state_dirs(str(tmp_path))) == sorted([str(stale), str(unheld)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, held.name, huge.name]
    )
    holder.close()
    assert str(held) in remove_stale_state_dirs(str(tmp_path))


#: A grandparent (a child subreaper, so that it can wait for its grandchild) starts a
#: supervisor stand-in, which starts a worker whose drain never ends (its SIGTERM handler
#: only says it was called) and that watches its parent with a 0.5 s deadline; the
#: grandparent kills the supervisor and prints how the worker ended and the SIGTERMs it got.
ORPHAN = r"""
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
worker = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('TERM', flush=True))\n"
    "os.environ['PYSERVING_SUPERVISOR_PID'] = str(os.getppid())\n"
    "from pyserving.server.workers import watch_parent\n"
    "watch_parent(deadline=0.5)\n"
    "print(os.getpid(), flush=True)\n"
    "while True: time.sleep(3600)\n"
)
parent = (
    "import subprocess, sys, time\n"
    f"subprocess.Popen([sys.executable, '-c', {worker!r}])\n"
    "time.sleep(3600)\n"
)
supervisor = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
pid = int(supervisor.stdout.readline())
supervisor.kill()
supervisor.wait()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), supervisor.stdout.read().split())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_worker_whose_supervisor_died_exits_even_if_its_drain_does_not_end() -> None:
    result = subprocess.run(
        [sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    # Exit status 1 from the watcher, after exactly one SIGTERM: the kernel's (a second one
    # would end a drain under way at once).
    assert result.stdout.strip() == "1 ['TERM']", result.stdout
    assert "still running 0s after the supervisor died; exiting" in result.stderr


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


def test_the_budget_check_reads_the_platform_config_file(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """With --platform_config_file the supervisor's estimates use its settings, not the
    flags it replaces; a file that cannot be read is left to the workers to report."""
    from pyserving.flags import parse_flags
    from pyserving.server.workers import _budget_refusal

    platform = tmp_path / "platform.config"
    platform.write_text(
        'platform_configs { key: "tensorflow" value { source_adapter_config { '
        "[type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] { "
        'legacy_config { saved_model_tags: "serve" } } } } }\n'
    )
    args = [
        f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        "--num_workers=2",
        "--model_memory_budget_bytes=1",
        "--saved_model_tags=no-such-tag",  # replaced by the file
    ]
    message = _budget_refusal(parse_flags([*args, f"--platform_config_file={platform}"]))
    assert message is not None and "--num_workers=2: each worker loads every model" in message
    platform.write_text("not a platform config")
    assert _budget_refusal(parse_flags([*args, f"--platform_config_file={platform}"])) is None
