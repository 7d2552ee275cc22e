"""A short end-to-end check of an installed pyserving, with nothing but its own dependencies.

Run as ``python tests/smoke.py`` from the repository root with any interpreter pyserving
supports (CI runs it on the newest one, in a virtual environment holding only
``pip install .``). It starts ``python -m pyserving`` on the bundled flowers model on free
loopback ports, then checks ``--help`` and ``--version``, REST status, list and predict,
a gRPC Predict through the official ``tensorflow-serving-api`` stubs and the dashboard's
page and state (its files are package data), and stops the
server with SIGTERM. Exit status 0 when every check passed; each failure is printed.
"""

from __future__ import annotations

import json
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "flowers"
ROWS = [[5.0, 3.4, 1.5, 0.25], [6.6, 3.0, 5.6, 2.0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read()


def _wait_ready(process: subprocess.Popen[bytes], url: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            status, body = _http(url)
            if status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE":
                return
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def main() -> int:
    failures: list[str] = []

    def check(name: str, condition: Callable[[], bool]) -> None:
        try:
            ok = condition()
        except Exception as exc:  # a failed check is reported, the others still run
            ok = False
            name += f" ({type(exc).__name__}: {exc})"
        print(("ok    " if ok else "FAIL  ") + name, flush=True)
        if not ok:
            failures.append(name)

    command = [sys.executable, "-m", "pyserving"]
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False)
    check("--help lists the flags", lambda: "--model_base_path=" in helped.stdout)
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False)
    check("--version", lambda: "TensorFlow ModelServer: pyserving" in version.stdout)

    rest_port, grpc_port = _free_port(), _free_port()
    base = f"http://127.0.0.1:{rest_port}/v1/models"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                *command,
                "--model_name=flowers",
                f"--model_base_path={MODEL}",
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(process, f"{base}/flowers", 300)
            body = json.dumps({"instances": ROWS}).encode()
            status, answer = _http(f"{base}/flowers:predict", body)
            check(
                "REST predict",
                lambda: status == 200 and [p["class_ids"] for p in answer["predictions"]] == [0, 2],
            )
            status, listed = _http(base)
            check("REST model list", lambda: [m["name"] for m in listed["models"]] == ["flowers"])
            status, missing = _http(f"{base}/nope")
            check("REST unknown model is 404", lambda: status == 404 and "nope" in missing["error"])
            check("gRPC Predict", lambda: _grpc_predict(grpc_port) == [0, 2])
            dashboard = f"http://127.0.0.1:{rest_port}/dashboard/"
            check(
                "dashboard page and its assets (package data installed)",
                lambda: all(
                    _get(dashboard + path)[0] == 200 and _get(dashboard + path)[1]
                    for path in ("", "static/dashboard.js", "static/dashboard.css")
                ),
            )
            status, state = _http(dashboard + "api/state")
            check(
                "dashboard state",
                lambda: status == 200 and [m["name"] for m in state["models"]] == ["flowers"],
            )
        except Exception as exc:
            failures.append(f"server: {exc}")
            print(f"FAIL  server: {exc}", flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            check("clean shutdown on SIGTERM", lambda: code == 0)
            if failures:
                log.seek(0)
                sys.stdout.write(log.read().decode(errors="replace"))
    print(f"smoke test on Python {sys.version.split()[0]}: {len(failures)} check(s) failed")
    return 1 if failures else 0


def _grpc_predict(port: int) -> list[int]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "flowers"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(ROWS, dtype=tf.float32))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=60)
    return [int(v) for v in tf.make_ndarray(response.outputs["class_ids"]).ravel()]


if __name__ == "__main__":
    sys.exit(main())
