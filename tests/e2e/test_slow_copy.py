"""A new version copied slowly into the repository of the real server, while a client predicts.

One server for the module (``python -m pyserving``, polling every second, loads inline in the
manager loop and 5 load retries as by default) with two models, each serving version 123 of
TF Serving's ``saved_model_half_plus_two_2_versions`` (y = x / 2 + 2) when the test starts:

* ``varsfirst``: version 124 arrives ``variables/`` and ``assets/`` first, ``saved_model.pb``
  only once the server has looked at the incomplete directory for several polls;
* ``pbfirst``: version 124 arrives ``saved_model.pb`` and ``variables/variables.index`` first
  and stalls before the variables' data file: the server cannot tell that the copy is
  unfinished, loads it, fails (the checkpoint cannot be restored) and waits to retry; then the
  rest arrives.

The retry interval is 600 s, far longer than any wait here: version 124 serving in time proves
it was not loaded by a scheduled retry. Every wait is a bounded loop on the server's own
observable state (model status, its log), with generous deadlines; nothing asserts how long
anything took (the figures are printed).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

MODELS = ("varsfirst", "pbfirst")
OLD, NEW = "00000123", "00000124"
RETRY_INTERVAL_S = 600
DEADLINE_S = 120.0  # for "eventually" conditions; well below RETRY_INTERVAL_S


def copy_tree(source: pathlib.Path, target: pathlib.Path) -> None:
    """Copy a directory tree, leaving it writable (the test data may be read-only)."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for root, dirs, _files in os.walk(target):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    os.chmod(target, 0o755)


@dataclass
class Env:
    server: RunningServer
    repo: pathlib.Path
    models: pathlib.Path  # saved_model_half_plus_two_2_versions

    def status(self, name: str) -> dict[int, dict[str, Any]]:
        r = self.server.client.get(f"/v1/models/{name}")
        assert r.status_code == 200, r.text
        return {int(s["version"]): s for s in r.json()["model_version_status"]}

    def available(self, name: str) -> list[int]:
        return sorted(v for v, s in self.status(name).items() if s["state"] == "AVAILABLE")


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded); return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@pytest.fixture(scope="module")
def env(testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("slowcopy")
    repo = tmp / "repo"
    models = testdata / "saved_model_half_plus_two_2_versions"
    for name in MODELS:
        (repo / name).mkdir(parents=True)
        copy_tree(models / OLD, repo / name / OLD)
    config = tmp / "models.config"
    body = "".join(f'  config {{ name: "{n}" base_path: "{repo / n}" }}\n' for n in MODELS)
    config.write_text(f"model_config_list {{\n{body}}}\n")
    srv = RunningServer(
        [
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=1",
            f"--load_retry_interval_micros={RETRY_INTERVAL_S * 1_000_000}",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    try:
        yield Env(srv, repo, models)
    finally:
        assert srv.stop() == 0, srv.log()


class Client:
    """Predicts ``latest`` of one model over REST in a loop until stopped; every answer must
    be y = 3.0 for x = 2.0 (both versions compute it)."""

    def __init__(self, env: Env, model: str) -> None:
        self.url = env.server.url
        self.model = model
        self.requests = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"client-{model}")

    def __enter__(self) -> Client:
        self._thread.start()
        wait_until(lambda: self.requests > 0, "the client's first answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        body = json.dumps({"instances": [[2.0]]})
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"/v1/models/{self.model}:predict", content=body)
                    if r.status_code != 200 or r.json() != {"predictions": [[3.0]]}:
                        self.failures.append(f"{r.status_code} {r.text}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.requests += 1
                self._stop.wait(0.005)  # pacing only: leave the 2 cores to the server


def test_variables_first_version_loads_once_saved_model_pb_arrives(env: Env) -> None:
    """The incomplete directory is never loaded (it shows as NOT_FOUND in status meanwhile);
    once saved_model.pb arrives it loads in one attempt and replaces 123; the client sees no
    failure throughout."""
    base = env.repo / "varsfirst"
    target = base / str(int(NEW))
    with Client(env, "varsfirst") as client:
        target.mkdir()
        copy_tree(env.models / NEW / "variables", target / "variables")
        copy_tree(env.models / NEW / "assets", target / "assets")

        def reported() -> dict[str, Any] | None:
            state = env.status("varsfirst").get(124)
            return state if state and state["state"] == "END" else None

        # The server has looked at the incomplete directory for several polls by now.
        state = wait_until(reported, "version 124 to be reported incomplete")
        assert state["status"]["error_code"] == "NOT_FOUND", state
        assert "saved_model.pb" in state["status"]["error_message"]
        assert env.available("varsfirst") == [123]
        before = client.requests
        shutil.copyfile(env.models / NEW / "saved_model.pb", target / "saved_model.pb")
        written = time.monotonic()
        wait_until(lambda: env.available("varsfirst") == [124], "version 124 to serve")
        took = time.monotonic() - written
        assert client.requests > before  # the client was predicting during the change
    assert client.failures == [], client.failures[:5]
    assert env.status("varsfirst")[124]["status"] == {"error_code": "OK", "error_message": ""}
    log = env.server.log()
    assert log.count("Loading servable version {name: varsfirst version: 124}") == 1, log
    assert "Failed to load servable version {name: varsfirst version: 124}" not in log
    print(f"varsfirst: 124 served {took:.2f}s after saved_model.pb was written")


def test_stalled_copy_with_saved_model_pb_first_loads_without_waiting_to_retry(env: Env) -> None:
    """saved_model.pb and the variables' index first, then a stall: 124 is loaded too early,
    fails and waits 600 s to retry (while 123 serves). The data file arrives: the new content
    loads at once, not after the retry interval; the client sees no failure throughout."""
    base = env.repo / "pbfirst"
    target = base / str(int(NEW))
    with Client(env, "pbfirst") as client:
        (target / "variables").mkdir(parents=True)
        shutil.copyfile(env.models / NEW / "saved_model.pb", target / "saved_model.pb")
        index = "variables/variables.index"
        shutil.copyfile(env.models / NEW / index, target / index)
        wait_until(
            lambda: (
                "Loading servable {name: pbfirst version: 124} failed" in env.server.log()
                and f"retry 1 of 5 in {RETRY_INTERVAL_S}s" in env.server.log()
            ),
            "the premature load of version 124 to fail and wait to retry",
        )
        assert env.available("pbfirst") == [123]
        before = client.requests
        data = "variables/variables.data-00000-of-00001"
        shutil.copyfile(env.models / NEW / data, target / data)
        copy_tree(env.models / NEW / "assets", target / "assets")
        written = time.monotonic()
        wait_until(lambda: env.available("pbfirst") == [124], "version 124 to serve")
        took = time.monotonic() - written
        assert client.requests > before
    assert client.failures == [], client.failures[:5]
    assert env.status("pbfirst")[124]["status"] == {"error_code": "OK", "error_message": ""}
    assert "Stopped retrying {name: pbfirst version: 124}: its content changed" in (
        env.server.log()
    )
    print(f"pbfirst: 124 served {took:.2f}s after the rest of the copy was written")
