"""Operating the server: config polling, live version updates, metrics, health, SIGTERM."""

from __future__ import annotations

import json
import pathlib
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.server import RunningServer, free_port, run_to_exit

pytestmark = pytest.mark.e2e


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def write_config(path: pathlib.Path, models: dict[str, pathlib.Path]) -> None:
    body = "".join(f'config {{ name: "{n}" base_path: "{p}" }}\n' for n, p in models.items())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"model_config_list {{\n{body}}}\n")
    tmp.replace(path)  # atomic, as an operator's config management would do


def predict(server: RunningServer, model: str, x: float = 2.0) -> tuple[int, dict]:
    r = server.client.post(f"/v1/models/{model}:predict", content=json.dumps({"instances": [[x]]}))
    return r.status_code, r.json()


@pytest.fixture
def repo(testdata: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", tmp_path / "two")
    shutil.copytree(testdata / "saved_model_half_plus_three", tmp_path / "three")
    return tmp_path


@pytest.fixture
def polled(
    repo: pathlib.Path, testdata: pathlib.Path, tmp_path: pathlib.Path
) -> Iterator[RunningServer]:
    config = tmp_path / "models.config"
    write_config(config, {"two": repo / "two"})
    srv = RunningServer(
        [
            f"--model_config_file={config}",
            "--model_config_file_poll_wait_seconds=1",
            "--file_system_poll_wait_seconds=1",
            f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        ],
        tmp_path / "server.log",
    )
    srv.config_path = config  # type: ignore[attr-defined]
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


def test_config_rewrite_adds_and_removes_models(polled: RunningServer, repo: pathlib.Path) -> None:
    config: pathlib.Path = polled.config_path  # type: ignore[attr-defined]
    write_config(config, {"two": repo / "two", "three": repo / "three"})
    wait_for(lambda: predict(polled, "three")[0] == 200)
    assert predict(polled, "three") == (200, {"predictions": [[4.0]]})
    write_config(config, {"three": repo / "three"})
    wait_for(lambda: predict(polled, "two")[0] == 404)
    assert predict(polled, "three")[0] == 200
    # A broken rewrite is refused and the current set keeps serving.
    config.write_text("model_config_list { config { nmae: 'x' } }")
    wait_for(lambda: "Not applying model config file" in polled.log())
    assert predict(polled, "three")[0] == 200


def test_a_label_for_a_version_not_there_yet_is_given_once_it_is(
    polled: RunningServer, repo: pathlib.Path, testdata: pathlib.Path
) -> None:
    """A rewrite whose model set applies but whose label names a version not AVAILABLE yet
    is applied again at every poll: the label is given once the version serves, without
    the file changing again. Restoring the file in force before applies it."""
    config: pathlib.Path = polled.config_path  # type: ignore[attr-defined]
    two = repo / "two"

    def write_labelled() -> None:
        tmp = config.with_suffix(".tmp")
        tmp.write_text(
            "model_config_list {\n"
            f'config {{ name: "two" base_path: "{two}"\n'
            "  model_version_policy { all {} }\n"
            '  version_labels { key: "next" value: 124 } }\n}\n'
        )
        tmp.replace(config)

    labelled = "/v1/models/two/labels/next:predict"
    body = json.dumps({"instances": [[2.0]]})
    write_labelled()
    wait_for(lambda: "applying it again at every poll" in polled.log())
    assert polled.client.post(labelled, content=body).status_code == 400
    # The previous file restored is applied (the failed one is not taken as in force).
    write_config(config, {"two": two})
    wait_for(lambda: "Model config reloaded: two" in polled.log())
    write_labelled()
    wait_for(lambda: polled.log().count("applying it again at every poll") >= 2)
    staging = repo / "staging"
    shutil.copytree(testdata / "saved_model_half_plus_two_2_versions" / "00000124", staging)
    staging.rename(two / "00000124")
    wait_for(lambda: polled.client.post(labelled, content=body).status_code == 200)
    assert polled.log().count("Model config reloaded: two") >= 2
    # A config file that cannot be read is said once; the current set keeps serving.
    config.unlink()
    wait_for(lambda: "Failed to read model config file" in polled.log())
    assert polled.client.post(labelled, content=body).status_code == 200


def test_new_version_served_while_old_serves_until_then(
    polled: RunningServer, repo: pathlib.Path, testdata: pathlib.Path
) -> None:
    """Copy a new version in; requests never fail, and it serves within two poll intervals."""
    failures: list[object] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, body = predict(polled, "two")
            if status != 200:
                failures.append(body)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        staging = repo / "staging"
        shutil.copytree(testdata / "saved_model_half_plus_two_2_versions" / "00000124", staging)
        staging.rename(repo / "two" / "00000124")  # appears complete, as a rename does
        added = time.monotonic()
        wait_for(
            lambda: (
                [
                    s["version"]
                    for s in polled.client.get("/v1/models/two").json()["model_version_status"]
                    if s["state"] == "AVAILABLE"
                ]
                == ["124"]
            )
        )
        took = time.monotonic() - added
    finally:
        stop.set()
        thread.join()
    assert failures == []
    # Polling every second: picked up and loaded well within a few intervals even on a busy
    # machine (the figure is reported, not asserted tightly).
    print(f"new version served after {took:.2f}s")
    r = polled.client.get("/v1/models/two/versions/124/metadata")
    assert r.status_code == 200


def test_metrics_and_health(polled: RunningServer) -> None:
    assert predict(polled, "two")[0] == 200
    assert predict(polled, "nope")[0] == 404
    r = polled.client.get("/monitoring/prometheus/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    counts = {
        (s.labels["model_name"], s.labels["status"]): s.value
        for s in families[":tensorflow:serving:request_count"].samples
    }
    assert counts[("two", "OK")] >= 1
    assert counts[("nope", "NOT_FOUND")] >= 1
    latency = families[":tensorflow:serving:request_latency"]
    assert any(
        s.labels.get("API") == "predict" and s.labels.get("entrypoint") == "REST"
        for s in latency.samples
    )
    assert ":tensorflow:cc:saved_model:load_latency" in families
    states = families["pyserving_model_version_state"]
    assert any(
        s.labels == {"model_name": "two", "version": "123", "state": "AVAILABLE"} and s.value == 1
        for s in states.samples
    )
    assert polled.client.get("/v2/health/live").json() == {"live": True}
    assert polled.client.get("/v2/health/ready").status_code == 200
    assert polled.client.get("/readyz").status_code == 200


@pytest.mark.parametrize(("args", "state"), [([], "off"), (["--tensorflow_onednn"], "on")])
def test_onednn_kernels_follow_the_flag(
    args: list[str],
    state: str,
    testdata: pathlib.Path,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Off unless asked for (TF Serving's standard build); the server's TensorFlow reports it.
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    srv = RunningServer(
        [
            "--model_name=two",
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
            *args,
        ],
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        assert predict(srv, "two", 3.0) == (200, {"predictions": [[3.5]]})
    finally:
        srv.stop()
    assert f"TensorFlow kernels: oneDNN {state} (--tensorflow_onednn)" in srv.log()


def test_startup_failure_exits_nonzero(testdata: pathlib.Path) -> None:
    result = run_to_exit(
        [
            "--port=0",
            "--model_name=bad",
            f"--model_base_path={testdata / 'bad_half_plus_two'}",
            "--max_num_load_retries=0",
        ]
    )
    assert result.returncode != 0
    assert "1 model(s) did not become available" in result.stderr
    assert "Could not find SavedModel" in result.stderr


@pytest.mark.parametrize("held", ["grpc", "rest"])
def test_a_port_in_use_exits_nonzero_with_one_line(testdata: pathlib.Path, held: str) -> None:
    """A port another process holds: exit 1 with the bind error in one line, no traceback
    (the models had loaded: the failure comes when the front ends start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        other = free_port()
        grpc_port, rest_port = (port, other) if held == "grpc" else (other, port)
        result = run_to_exit(
            [
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
                "--model_name=half_plus_two",
                f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
            ]
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failure = [line for line in result.stderr.splitlines() if line.startswith("Failed to")]
    assert len(failure) == 1 and f":{port}:" in failure[0], result.stderr
    assert "already in use" in failure[0].lower()


def test_bad_config_file_exits_nonzero(testdata: pathlib.Path) -> None:
    result = run_to_exit(["--port=0", f"--model_config_file={testdata / 'bad_model_config.txt'}"])
    assert result.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr


def export_slow_model(base: pathlib.Path, started: pathlib.Path | None = None) -> None:
    """A SavedModel whose predict loops ``n`` times over a matrix product (slow on purpose).
    With ``started``, each call first writes that (empty) file: a test sees a call begin."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="n")])
        def run(self, n: tf.Tensor) -> dict[str, tf.Tensor]:
            m = tf.ones([256, 256]) / 256.0
            if started is not None:
                with tf.control_dependencies([tf.io.write_file(str(started), "")]):
                    m = tf.identity(m)

            def body(i: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return i + 1, tf.matmul(acc, m)

            _, acc = tf.while_loop(lambda i, acc: i < n[0], body, [tf.constant(0), m])
            return {"y": tf.fill(tf.shape(n), tf.reduce_sum(acc))}

    module = Slow()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.run})


def test_sigterm_lets_a_slow_request_finish(tmp_path: pathlib.Path) -> None:
    started = tmp_path / "started"
    export_slow_model(tmp_path / "slow", started)
    srv = RunningServer(
        ["--model_name=slow", f"--model_base_path={tmp_path / 'slow'}"], tmp_path / "server.log"
    )
    srv.wait_ready()
    # Calibrate: find an n that takes about a second on this machine.
    n = 200
    while True:
        start = time.monotonic()
        r = srv.client.post("/v1/models/slow:predict", content=json.dumps({"instances": [n]}))
        assert r.status_code == 200, r.text
        if time.monotonic() - start > 1.0 or n > 200_000:
            break
        n *= 4
    result: dict[str, object] = {}

    def slow_request() -> None:
        r = srv.client.post("/v1/models/slow:predict", content=json.dumps({"instances": [n]}))
        result["status"] = r.status_code

    started.unlink()
    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(started.exists)  # the model is running the request
    srv.process.send_signal(signal.SIGTERM)
    thread.join(120)
    assert result.get("status") == 200
    assert srv.process.wait(60) == 0
    srv.stop()
    assert "Done unloading servable version {name: slow version: 1}" in srv.log()


def test_sigterm_ends_a_reload_waiting_for_its_models(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A HandleReloadConfigRequest waits until its models settle, which for a base path
    that does not exist yet is never: SIGTERM answers it UNAVAILABLE and the server exits."""
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    model = testdata / "saved_model_half_plus_two_cpu"
    srv = RunningServer(["--model_name=hp2", f"--model_base_path={model}"], tmp_path / "server.log")
    srv.wait_ready()
    request = model_management_pb2.ReloadConfigRequest()
    for name, base_path in (("hp2", model), ("later", tmp_path / "not-there-yet")):
        config = request.config.model_config_list.config.add()
        config.name = name
        config.base_path = str(base_path)
        config.model_platform = "tensorflow"
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        reload = stub.HandleReloadConfigRequest.future(request, timeout=600)
        # The new model set is in force (and the reload waits for it) once it is listed.
        wait_for(
            lambda: "later" in {m["name"] for m in srv.client.get("/v1/models").json()["models"]}
        )
        assert not reload.done()
        srv.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as info:
            reload.result(timeout=120)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in str(info.value.details())
    assert srv.process.wait(120) == 0
    srv.stop()


def test_rest_timeout_and_cors(tmp_path: pathlib.Path) -> None:
    export_slow_model(tmp_path / "slow")
    srv = RunningServer(
        [
            "--model_name=slow",
            f"--model_base_path={tmp_path / 'slow'}",
            "--rest_api_timeout_in_ms=200",
            "--rest_api_enable_cors_support",
        ],
        tmp_path / "server.log",
    )
    srv.wait_ready()
    try:
        # Grow the work until a request outlives the 200 ms timeout (bounded).
        n, r = 1000, None
        for _ in range(8):
            r = srv.client.post("/v1/models/slow:predict", content=json.dumps({"instances": [n]}))
            if r.status_code == 504:
                break
            assert r.status_code == 200, r.text
            n *= 4
        assert r is not None and r.status_code == 504
        assert r.json() == {"error": "Request timed out after 200 ms"}
        # A small request is answered: retried, since on a busy machine the one that timed
        # out (its thread runs on) may hold the CPU long enough to make it miss 200 ms too.
        answers: list[httpx.Response] = []

        def small_request_ok() -> bool:
            answers.append(
                srv.client.post("/v1/models/slow:predict", content=json.dumps({"instances": [1]}))
            )
            return answers[-1].status_code == 200

        wait_for(small_request_ok)
        ok = answers[-1]
        assert ok.headers["access-control-allow-origin"] == "*"
        assert "POST" in ok.headers["access-control-allow-methods"]
        preflight = srv.client.options("/v1/models/slow:predict")
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-headers"] == "Content-Type"
    finally:
        assert srv.stop() == 0, srv.log()


def test_inspect_command(testdata: pathlib.Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyserving",
            "inspect",
            str(testdata / "saved_model_half_plus_two_cpu"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Version 123" in out
    assert "MetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:" in out
    assert "signature_def['serving_default']:" in out
    assert "    inputs['x'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 1)\n" in out
    assert "Method name is: tensorflow/serving/predict" in out
    assert "Method name is: tensorflow/serving/classify" in out
    bad = subprocess.run(
        [sys.executable, "-m", "pyserving", "inspect", str(testdata / "bad_half_plus_two")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "Could not find SavedModel" in bad.stderr
