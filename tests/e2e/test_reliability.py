"""Reliability end to end: the real server on loopback, real SavedModels, the model repository
changing under it while clients keep calling.

One server for the module (starting one costs seconds), each model used by one test:

* ``ap`` (availability-preserving, the default) and ``rp`` (``resource_preserving``): versions
  appear and vanish while clients hammer ``latest`` over REST and gRPC;
* ``slowcopy``: a version directory written slowly, file by file;
* ``fixme``: a corrupt version, then the same version number fixed in place;
* ``hang`` and ``other``: a version whose load blocks (its variables file is a FIFO nobody
  writes to) past ``--load_timeout_seconds``, while another model gets a new version;
* ``big``: added by a config reload, too large for ``--model_memory_budget_bytes``.

Every version is a copy of TF Serving's ``saved_model_half_plus_two_cpu`` (y = x / 2 + 2), so
any version answers 3.0 for x = 2. Waits are bounded loops on observable state (model status,
the server log); nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e

MODELS = ("ap", "rp", "slowcopy", "fixme", "hang", "other")
#: Every half_plus_two version reserves ~9.6 MiB (1.2 x its 24.6 KB of files plus a
#: SavedModel load's overhead): room for the dozen versions loaded at once at most.
BUDGET = 256 << 20
#: Every load is subject to it: generous next to a real load (~0.1-0.3 s, also on a busy
#: machine), so only the hanging one reaches it.
LOAD_TIMEOUT = 5


# ---------------------------------------------------------------------------- the repository


def copy_version(source: pathlib.Path, base: pathlib.Path, version: int) -> pathlib.Path:
    """Copy a SavedModel into ``base/<version>`` atomically (staged, then renamed into place),
    as deployment tools do. The copy is writable even when the source is not."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging, copy_function=shutil.copyfile)
    for root, dirs, _files in os.walk(staging):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    os.chmod(staging, 0o755)
    target = base / str(version)
    staging.rename(target)
    return target


def model_config(repo: pathlib.Path, names: Sequence[str]) -> str:
    body = "".join(f'  config {{ name: "{n}" base_path: "{repo / n}" }}\n' for n in names)
    return f"model_config_list {{\n{body}}}\n"


@dataclass
class Env:
    server: RunningServer
    repo: pathlib.Path
    source: pathlib.Path  # the SavedModel every version is a copy of
    channel: grpc.Channel

    def status(self, name: str) -> dict[int, dict[str, Any]]:
        r = self.server.client.get(f"/v1/models/{name}")
        if r.status_code == 404:
            return {}
        assert r.status_code == 200, r.text
        return {int(s["version"]): s for s in r.json()["model_version_status"]}

    def available(self, name: str) -> list[int]:
        return sorted(v for v, s in self.status(name).items() if s["state"] == "AVAILABLE")

    def predict(self, name: str) -> tuple[int, Any]:
        r = self.server.client.post(
            f"/v1/models/{name}:predict", content=json.dumps({"instances": [[2.0]]})
        )
        return r.status_code, r.json()


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded); return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def env(testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("reliability")
    repo = tmp / "repo"
    source = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    for name in MODELS:
        (repo / name).mkdir(parents=True)
        copy_version(source, repo / name, 1)
    config = tmp / "models.config"
    config.write_text(model_config(repo, MODELS))
    srv = RunningServer(
        [
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=1",
            "--version_policy_per_model=rp:resource_preserving",
            "--max_num_load_retries=0",
            f"--load_timeout_seconds={LOAD_TIMEOUT}",
            f"--model_memory_budget_bytes={BUDGET}",
        ],
        tmp / "server.log",
    )
    srv.wait_ready()
    channel = grpc.insecure_channel(f"localhost:{srv.grpc_port}")
    try:
        yield Env(srv, repo, source, channel)
    finally:
        channel.close()
        assert srv.stop() == 0, srv.log()


# ---------------------------------------------------------------------------- hammering


@dataclass
class Outcome:
    """What one client saw: per request, when it ended and whether it succeeded."""

    times: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, success: bool, error: str = "") -> None:
        self.times.append(time.monotonic())
        self.ok.append(success)
        if not success and len(self.errors) < 5:
            self.errors.append(error)

    @property
    def failures(self) -> int:
        return self.ok.count(False)

    def longest_gap(self) -> float:
        """Longest time from the last success before a run of failures to the next success."""
        longest = 0.0
        last_ok: float | None = None
        failing = False
        for t, ok in zip(self.times, self.ok, strict=True):
            if not ok:
                failing = True
            elif failing and last_ok is not None:
                longest = max(longest, t - last_ok)
                failing = False
            if ok:
                last_ok = t
        return longest


class Hammer:
    """One REST and one gRPC client per model, each calling predict on ``latest`` in a loop
    until stopped. Each request has a timeout, so every thread ends."""

    def __init__(self, env: Env, models: Sequence[str]) -> None:
        self.env = env
        self.outcomes = {(m, t): Outcome() for m in models for t in ("REST", "gRPC")}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(m, t), name=f"hammer-{m}-{t}")
            for m, t in self.outcomes
        ]

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def count(self, model: str) -> int:
        return sum(len(o.ok) for (m, _), o in self.outcomes.items() if m == model)

    def _run(self, model: str, transport: str) -> None:
        outcome = self.outcomes[(model, transport)]
        if transport == "REST":
            with httpx.Client(base_url=self.env.server.url, timeout=30) as client:
                body = json.dumps({"instances": [[2.0]]})
                while not self._stop.is_set():
                    try:
                        r = client.post(f"/v1/models/{model}:predict", content=body)
                        good = r.status_code == 200 and r.json() == {"predictions": [[3.0]]}
                        outcome.add(good, f"{r.status_code} {r.text}")
                    except httpx.HTTPError as exc:
                        outcome.add(False, repr(exc))
            return
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self.env.channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        while not self._stop.is_set():
            try:
                response = stub.Predict(request, timeout=30)
                good = tf.make_ndarray(response.outputs["y"]).tolist() == [[3.0]]
                outcome.add(good, str(response))
            except grpc.RpcError as exc:
                outcome.add(False, f"{exc.code()}: {exc.details()}")  # type: ignore[attr-defined]


# ------------------------------------------------------------------ 1. versions under load


def test_versions_change_under_load(env: Env, record_property: Callable[..., None]) -> None:
    """New versions appear, old ones vanish, the newest is rolled back: ``ap`` never fails a
    request; ``rp`` may, briefly (reported), and always comes back."""

    def add_2(model: str) -> None:
        copy_version(env.source, env.repo / model, 2)

    def add_3_remove_1(model: str) -> None:
        copy_version(env.source, env.repo / model, 3)
        shutil.rmtree(env.repo / model / "1")

    def remove_3(model: str) -> None:
        shutil.rmtree(env.repo / model / "3")

    steps = [
        ("version 2 appears", add_2, 2),
        ("version 3 appears, version 1 vanishes", add_3_remove_1, 3),
        ("version 3 vanishes: back to 2", remove_3, 2),
    ]
    with Hammer(env, ["ap", "rp"]) as hammer:
        wait_until(lambda: hammer.count("ap") > 0 and hammer.count("rp") > 0, "first requests")
        for what, change, expected in steps:
            before = {m: hammer.count(m) for m in ("ap", "rp")}
            for model in ("ap", "rp"):
                change(model)
            for model in ("ap", "rp"):
                wait_until(lambda m=model, v=expected: env.available(m) == [v], f"{model}: {what}")
            for model in ("ap", "rp"):  # requests ran during the change
                assert hammer.count(model) > before[model], what
    report = {}
    for model in ("ap", "rp"):
        outcomes = [o for (m, _), o in hammer.outcomes.items() if m == model]
        total = sum(len(o.ok) for o in outcomes)
        failed = sum(o.failures for o in outcomes)
        gap = max(o.longest_gap() for o in outcomes)
        report[model] = (total, failed, gap)
        record_property(f"{model}_requests", total)
        record_property(f"{model}_failed", failed)
        record_property(f"{model}_longest_gap_s", round(gap, 3))
        print(f"{model}: {failed} of {total} requests failed; longest gap {gap * 1000:.0f} ms")
    ap_errors = [e for (m, _), o in hammer.outcomes.items() if m == "ap" for e in o.errors]
    assert report["ap"][1] == 0, ap_errors
    # resource_preserving: unavailable between unloading the old and loading the new version
    # (404 Servable not found), never anything else, and the model comes back.
    rp_errors = [e for (m, _), o in hammer.outcomes.items() if m == "rp" for e in o.errors]
    assert all("404" in e or "NOT_FOUND" in e for e in rp_errors), rp_errors
    assert env.predict("rp") == (200, {"predictions": [[3.0]]})
    assert env.predict("ap") == (200, {"predictions": [[3.0]]})


# ------------------------------------------------------------------ 2. half-written, corrupt


def test_half_written_version_is_not_loaded_until_complete(env: Env) -> None:
    """A version directory written file by file (saved_model.pb first, the worst case for a
    marker check) over several polls is not loaded before the writing stops."""
    base = env.repo / "slowcopy"
    target = base / "2"
    target.mkdir()
    shutil.copyfile(env.source / "saved_model.pb", target / "saved_model.pb")
    (target / "variables").mkdir()
    data = target / "variables" / "variables.data-00000-of-00001"
    content = (env.source / "variables" / "variables.data-00000-of-00001").read_bytes()
    seen: set[str] = set()
    # A slow copy: the data file grows a byte every 20 ms until the source has seen the
    # version, then for three poll periods more. The writes run on a thread of their own, so
    # a slow status call cannot leave a gap of a whole poll period between two of them (the
    # listing would then look stable).
    stop = threading.Event()

    def write_slowly() -> None:
        size = 0
        while not stop.wait(0.02):
            size += 1
            data.write_bytes(b"\0" * size)

    writer = threading.Thread(target=write_slowly, name="slow-copy")
    writer.start()
    try:
        wait_until(
            lambda: f"Servable slowcopy version 2 found at {target}" in env.server.log(),
            "the source to see version 2",
        )
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            seen.update(s["state"] for v, s in env.status("slowcopy").items() if v == 2)
            time.sleep(0.1)
    finally:
        stop.set()
        writer.join(60)
    assert seen == set(), f"version 2 was picked up while being written: {seen}"
    data.write_bytes(content)
    shutil.copyfile(env.source / "variables" / "variables.index", target / "variables" / "x")
    (target / "variables" / "x").rename(target / "variables" / "variables.index")
    shutil.copytree(env.source / "assets", target / "assets", copy_function=shutil.copyfile)
    wait_until(lambda: env.available("slowcopy") == [2], "slowcopy version 2 to serve")
    states = env.status("slowcopy")
    assert states[2]["status"] == {"error_code": "OK", "error_message": ""}


def test_corrupt_version_errors_then_fixed_copy_loads(env: Env) -> None:
    base = env.repo / "fixme"
    staging = base / ".staging-2"
    shutil.copytree(env.source, staging, copy_function=shutil.copyfile)
    os.chmod(staging, 0o755)
    good_graph = (staging / "saved_model.pb").read_bytes()
    (staging / "saved_model.pb").write_bytes(b"\x08\xffnot a SavedModel")
    staging.rename(base / "2")

    def failed() -> dict[str, Any] | None:
        state = env.status("fixme").get(2)
        return state if state and state["state"] == "END" else None

    bad = wait_until(failed, "version 2 to fail")
    assert bad["status"]["error_code"] == "DATA_LOSS", bad
    assert "Can't parse" in bad["status"]["error_message"]
    assert env.available("fixme") == [1]  # the previous version keeps serving
    assert env.predict("fixme") == (200, {"predictions": [[3.0]]})
    # Fix it in place, same version number, atomically.
    (base / "2" / "fixed.pb").write_bytes(good_graph)
    (base / "2" / "fixed.pb").replace(base / "2" / "saved_model.pb")
    wait_until(lambda: env.available("fixme") == [2], "the fixed version 2 to serve")
    assert env.status("fixme")[2]["status"]["error_code"] == "OK"
    assert "Servable {name: fixme version: 2}: source content changed" in env.server.log()


# ------------------------------------------------------------------ 5. timeout, budget


def test_hanging_load_times_out_and_other_models_still_load(env: Env) -> None:
    hanging = env.repo / "hang" / ".staging-2"
    shutil.copytree(env.source, hanging, copy_function=shutil.copyfile)
    os.chmod(hanging, 0o755)
    os.chmod(hanging / "variables", 0o755)
    fifo = hanging / "variables" / "variables.data-00000-of-00001"
    fifo.unlink()
    os.mkfifo(fifo)  # reading it blocks until someone opens it for writing
    hanging.rename(env.repo / "hang" / "2")
    fifo = env.repo / "hang" / "2" / "variables" / "variables.data-00000-of-00001"
    copy_version(env.source, env.repo / "other", 2)

    def timed_out() -> dict[str, Any] | None:
        state = env.status("hang").get(2)
        return state if state and state["state"] == "END" else None

    state = wait_until(timed_out, "the hanging load to time out")
    assert state["status"]["error_code"] == "DEADLINE_EXCEEDED", state
    assert f"load timeout of {LOAD_TIMEOUT} seconds" in state["status"]["error_message"]
    wait_until(lambda: env.available("other") == [2], "the other model's new version")
    assert env.available("hang") == [1]
    assert env.predict("hang") == (200, {"predictions": [[3.0]]})
    # Let the abandoned load run to its end (it fails on the FIFO), so no thread is left
    # blocked in the server: open the FIFO for writing until the server says so.
    marker = "Abandoned load of servable {name: hang version: 2}"

    def released() -> bool:
        with contextlib.suppress(OSError):  # ENXIO: nobody reads it right now
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        return marker in env.server.log()

    wait_until(released, "the abandoned load to finish")
    assert env.available("hang") == [1]
    # Tried once: the failed version is not retried while its content stays the same.
    assert env.server.log().count("Loading servable version {name: hang version: 2}") == 1


def test_model_over_memory_budget_is_refused_and_others_serve(env: Env) -> None:
    big = env.repo / "big" / "1"
    big.parent.mkdir()
    copy_version(env.source, big.parent, 1)
    with open(big / "assets" / "padding.bin", "wb") as f:
        f.truncate(512 << 20)  # a sparse 512 MiB: estimated at 1.2 x, over the budget
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(model_config(env.repo, [*MODELS, "big"]), config)
    request = model_management_pb2.ReloadConfigRequest(config=config)
    stub = model_service_pb2_grpc.ModelServiceStub(env.channel)
    response = stub.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    state = env.status("big")[1]
    assert state["state"] == "END"
    assert state["status"]["error_code"] == "RESOURCE_EXHAUSTED"
    message = state["status"]["error_message"]
    assert "Insufficient resources to load servable big version 1" in message
    assert f"of {BUDGET} bytes of RAM is free" in message
    for name in MODELS:
        assert env.predict(name) == (200, {"predictions": [[3.0]]}), name
    r = env.server.client.post("/v1/models/big:predict", content=b'{"instances": [[2.0]]}')
    assert r.status_code == 404
