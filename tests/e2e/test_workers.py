"""``--num_workers=2``, end to end: the real command (a supervisor and two worker processes)
on real ports, called with real clients over fresh connections.

One server serves ``half`` (half_plus_two, version 1, polled every second) and ``slow`` (a
model as slow as asked, see ``test_operations.export_slow_model``) for the module; the tests
run in file order and the last one stops it with SIGTERM while a request is in flight.
Which worker answered is seen through ``pyserving_worker_request_count{worker}`` (the
scrape, whichever worker answers it, aggregates both), the workers' pids through the
supervisor's log.

What a killed worker costs clients (asserted below): requests on its open connections fail
with a connection error; a client that retries such a request on a new connection gets its
answer from a worker still listening, so it sees no failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.e2e.server import RunningServer, free_port, run_to_exit
from tests.e2e.test_operations import export_slow_model

pytestmark = pytest.mark.e2e

TIMEOUT = 180.0
WORKERS = 2
MODEL = "half"


def copy_version(source: pathlib.Path, base: pathlib.Path, version: int) -> None:
    """Copy a SavedModel into ``base/<version>``, staged then renamed into place."""
    staging = base / f".staging-{version}"
    shutil.copytree(source, staging, copy_function=shutil.copyfile)
    for root, dirs, _files in os.walk(staging):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    os.chmod(staging, 0o755)
    staging.rename(base / str(version))


def wait_until(what: str, check: Callable[[], bool], server: RunningServer) -> None:
    """Poll ``check`` (observable state) until true; fail after ``TIMEOUT`` with the log."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{server.log()[-5000:]}")
        if server.process.poll() is not None:
            pytest.fail(f"server exited ({server.process.returncode}) waiting for {what}")
        time.sleep(0.1)


@dataclass
class Served:
    server: RunningServer
    base: pathlib.Path
    source: pathlib.Path
    started: pathlib.Path  # written by each call of the slow model
    config: pathlib.Path  # --model_config_file
    metrics_path: str = "/monitoring/prometheus/metrics"

    def scrape(self) -> dict[str, float]:
        """One scrape over a fresh connection: ``{sample line without value: value}``."""
        response = httpx.get(self.server.url + self.metrics_path, timeout=60)
        assert response.status_code == 200
        samples = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def worker_counts(self) -> list[float]:
        samples = self.scrape()
        return [
            samples.get(f'pyserving_worker_request_count{{worker="{i}"}}', 0.0)
            for i in range(WORKERS)
        ]

    def pids(self) -> dict[int, int]:
        """The pid of each worker serving now, from the supervisor's log."""
        found: dict[int, int] = {}
        for index, pid in re.findall(r"Worker (\d+) \(pid (\d+)\) serving", self.server.log()):
            found[int(index)] = int(pid)
        return found


@pytest.fixture(scope="module")
def served(testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("workers")
    source = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    base = tmp / MODEL
    base.mkdir()
    copy_version(source, base, 1)
    started = tmp / "started"
    export_slow_model(tmp / "slow", started)
    models = tmp / "models.config"
    models.write_text(
        "model_config_list {\n"
        f'  config {{ name: "{MODEL}" base_path: "{base}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "slow" base_path: "{tmp / "slow"}" model_platform: "tensorflow" }}\n'
        "}\n"
    )
    monitoring = tmp / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    server = RunningServer(
        [
            f"--num_workers={WORKERS}",
            f"--model_config_file={models}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
            f"--monitoring_config_file={monitoring}",
        ],
        tmp / "server.log",
    )
    env = Served(server, base, source, started, models)
    try:
        wait_until(
            "every worker serving", lambda: f"All {WORKERS} workers serving" in server.log(), server
        )
        yield env
    finally:
        server.stop()


def rest_predict(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0]})


def grpc_predict_request() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["x"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]
            ),
            float_val=[1.0, 2.0],
        )
    )
    return request


def test_connections_reach_both_workers_which_answer_alike(served: Served) -> None:
    """Fresh REST and gRPC connections are spread over both workers; model status is the
    same from either (each connection asks for it, then predicts: the worker counts show
    both workers answered)."""
    url = served.server.url
    before = served.worker_counts()
    statuses = set()
    dashboards = set()
    for _ in range(24):
        with httpx.Client(timeout=60) as client:  # a new connection each time
            statuses.add(client.get(f"{url}/v1/models/{MODEL}").text)
            worker = client.get(f"{url}/dashboard/api/state").json()["server"]["worker"]
            dashboards.add((worker["index"], worker["count"]))
            response = rest_predict(client, url)
            assert response.status_code == 200, response.text
            assert response.json() == {"predictions": [2.5, 3.0]}
    assert statuses == {
        json.dumps(
            {
                "model_version_status": [
                    {
                        "version": "1",
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                ]
            },
            separators=(",", ":"),
        )
    }
    after_rest = served.worker_counts()
    assert all(a > b for a, b in zip(after_rest, before, strict=True)), (before, after_rest)
    assert sum(after_rest) - sum(before) == 24
    assert dashboards == {(0, WORKERS), (1, WORKERS)}  # each says whose figures it shows

    grpc_statuses = set()
    for _ in range(24):
        with grpc.insecure_channel(f"127.0.0.1:{served.server.grpc_port}") as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": MODEL}),
                timeout=60,
            )
            grpc_statuses.add(status.SerializeToString(deterministic=True))
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                grpc_predict_request(), timeout=60
            )
            assert list(answer.outputs["y"].float_val) == [2.5, 3.0]
    assert len(grpc_statuses) == 1
    after_grpc = served.worker_counts()
    assert all(a > b for a, b in zip(after_grpc, after_rest, strict=True)), (after_rest, after_grpc)


def test_every_scrape_sums_both_workers(served: Served) -> None:
    """Whichever worker answers, a scrape shows the requests of both, summed, under TF
    Serving's names."""
    for _ in range(10):
        with httpx.Client(timeout=60) as client:
            assert rest_predict(client, served.server.url).status_code == 200
    scrapes = [served.scrape() for _ in range(6)]  # fresh connections: both workers answer
    key = f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}'
    for samples in scrapes:
        per_worker = [
            samples[f'pyserving_worker_request_count{{worker="{i}"}}'] for i in range(WORKERS)
        ]
        assert all(count > 0 for count in per_worker)
        assert samples[key] == sum(per_worker)
        latency = (
            ":tensorflow:serving:request_latency_count"
            f'{{API="predict",entrypoint="REST",model_name="{MODEL}"}}'
        )
        assert samples[latency] >= 24 + 10
    assert len({s[key] for s in scrapes}) == 1


def test_reloading_by_request_is_refused(served: Served) -> None:
    """A reload request would reach one worker only: it is refused."""
    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = MODEL, str(served.base), "tensorflow"
    with grpc.insecure_channel(f"127.0.0.1:{served.server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.HandleReloadConfigRequest(request, timeout=60)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "--num_workers=2" in str(caught.value.details())


@dataclass
class Client:
    """Predicts in a loop over fresh gRPC connections until stopped; retries a request
    that fails with UNAVAILABLE (a connection refused or reset) on a new connection."""

    port: int
    versions: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retries: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for _attempt in range(20):
                try:
                    with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                            grpc_predict_request(), timeout=60
                        )
                    self.versions.append(answer.model_spec.version.value)
                    break
                except grpc.RpcError as exc:
                    if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                        self.failures.append(f"{exc.code()}: {exc.details()}")
                        break
                    self.retries += 1
            else:
                self.failures.append("still UNAVAILABLE after 20 connections")


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    c = Client(served.server.grpc_port)
    thread = threading.Thread(target=c.run, name="workers-test-client", daemon=True)
    thread.start()
    try:
        yield c
    finally:
        c.stop.set()
        thread.join(TIMEOUT)


def test_new_version_reaches_every_worker_without_failures(served: Served, client: Client) -> None:
    copy_version(served.source, served.base, 2)

    def state(version: int, name: str) -> float:
        key = (
            f'pyserving_model_version_state{{model_name="{MODEL}",state="{name}",'
            f'version="{version}"}}'
        )
        return served.scrape().get(key, 0.0)

    wait_until(
        "version 2 AVAILABLE and version 1 END in both workers",
        lambda: state(2, "AVAILABLE") == WORKERS and state(1, "END") == WORKERS,
        served.server,
    )
    seen = len(client.versions)
    wait_until("more answers", lambda: len(client.versions) >= seen + 10, served.server)
    client.stop.set()
    assert client.failures == []
    assert client.retries == 0
    assert set(client.versions[seen:]) == {2}
    for _ in range(10):  # fresh connections, whichever worker: version 2
        with httpx.Client(timeout=60) as http:
            status = http.get(f"{served.server.url}/v1/models/{MODEL}").json()
        states = {s["version"]: s["state"] for s in status["model_version_status"]}
        assert states == {"2": "AVAILABLE", "1": "END"}


def test_killed_worker_is_restarted_while_the_other_serves(served: Served, client: Client) -> None:
    pids = served.pids()
    assert sorted(pids) == [0, 1]
    victim = pids[1]
    wait_until("answers", lambda: len(client.versions) >= 5, served.server)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        "the death logged",
        lambda: (
            f"Worker 1 (pid {victim}) was killed by SIGKILL; restarting it" in served.server.log()
        ),
        served.server,
    )
    answered_at_death = len(client.versions)
    wait_until("worker 1 serving again", lambda: served.pids()[1] != victim, served.server)
    answered_while_restarting = len(client.versions) - answered_at_death
    wait_until(
        "more answers", lambda: len(client.versions) >= answered_at_death + 20, served.server
    )
    client.stop.set()
    assert client.failures == []
    assert answered_while_restarting > 0  # worker 0 kept serving
    assert served.pids()[0] == pids[0]
    # The new worker serves: its count grows over fresh connections.
    before = served.worker_counts()[1]

    def restarted_worker_answered() -> bool:
        with httpx.Client(timeout=60) as http:  # a fresh connection
            assert rest_predict(http, served.server.url).status_code == 200
        return served.worker_counts()[1] > before

    wait_until("the restarted worker answering", restarted_worker_answered, served.server)


def test_a_worker_restarted_in_a_state_a_fresh_start_refuses_waits_then_serves(
    served: Served,
) -> None:
    """The config file broken since the workers read it (they do not poll it), and the
    newest version corrupt (the workers keep serving the one before): a restarted worker
    takes the configuration the others applied, not the broken file (reading it would end
    its start), and, since its version policy picks only the corrupt version, waits without
    serving (and without dying and being restarted in a loop) until a good version
    arrives; the other worker serves throughout."""
    config = served.config.read_text()
    served.config.write_text("model_config_list { this is not a config")
    broken = served.base / ".staging-3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    broken.rename(served.base / "3")

    def state(version: int, name: str) -> float:
        key = (
            f'pyserving_model_version_state{{model_name="{MODEL}",state="{name}",'
            f'version="{version}"}}'
        )
        return served.scrape().get(key, 0.0)

    try:
        wait_until(
            "version 3 failed in both workers", lambda: state(3, "END") == WORKERS, served.server
        )
        victim = served.pids()[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            "the restarted worker waiting",
            lambda: "have no version this worker can serve (half); waiting" in served.server.log(),
            served.server,
        )
        assert served.pids()[1] == victim  # not serving
        for _ in range(5):  # fresh connections: worker 0 answers them all
            with httpx.Client(timeout=60) as http:
                answer = rest_predict(http, served.server.url)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"predictions": [2.5, 3.0]}
        copy_version(served.source, served.base, 4)
        wait_until("worker 1 serving again", lambda: served.pids()[1] != victim, served.server)
        after_kill = served.server.log().split(f"(pid {victim}) was killed by SIGKILL", 1)[1]
        assert "exited with status" not in after_kill  # no restart loop
        assert "Every model has a version AVAILABLE; serving" in after_kill
    finally:
        served.config.write_text(config)


def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(served: Served) -> None:
    url = served.server.url

    def slow(n: int) -> int:
        with httpx.Client(timeout=TIMEOUT) as http:  # a fresh connection
            return http.post(f"{url}/v1/models/slow:predict", json={"instances": [n]}).status_code

    # A request that runs long enough for SIGTERM to find it in flight (about a second).
    n = 200
    while True:
        start = time.monotonic()
        assert slow(n) == 200
        if time.monotonic() - start > 1.0 or n > 200_000:
            break
        n *= 4
    pids = served.pids()
    served.started.unlink()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(slow(n)), name="in-flight")
    thread.start()
    wait_until("the slow request running", served.started.exists, served.server)
    served.server.process.send_signal(signal.SIGTERM)
    thread.join(TIMEOUT)
    assert result == [200]
    assert served.server.process.wait(TIMEOUT) == 0
    log = served.server.log()
    for index, pid in pids.items():
        assert f"Worker {index} (pid {pid}) exited with status 0" in log
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ---------------------------------------------------------------------------- refusals


def test_memory_budget_refuses_n_copies_at_start(testdata: pathlib.Path) -> None:
    from pyserving.platforms.registry import PlatformOptions, get_platform

    version = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    one = get_platform("tensorflow").loader(str(version), PlatformOptions()).estimate_resources()
    result = run_to_exit(
        [
            f"--port={free_port()}",
            "--num_workers=3",
            f"--model_base_path={version.parent}",
            f"--model_memory_budget_bytes={3 * one.ram_bytes - 1}",
        ]
    )
    assert result.returncode == 1
    assert (
        f"--num_workers=3: each worker loads every model, so the models need "
        f"3 x {one.ram_bytes} = {3 * one.ram_bytes} bytes of RAM, more than "
        f"--model_memory_budget_bytes={3 * one.ram_bytes - 1} "
        f"(default version 123: {one.ram_bytes}). Raise the budget or lower --num_workers "
        "(at most 2 fit)."
    ) in result.stderr
    assert "Worker 0 started" not in result.stderr


def test_workers_need_a_fixed_port(tmp_path: pathlib.Path) -> None:
    result = run_to_exit(["--port=0", "--num_workers=2", f"--model_base_path={tmp_path}"])
    assert result.returncode == 1
    assert "--num_workers=2 needs a fixed --port, not 0" in result.stderr
