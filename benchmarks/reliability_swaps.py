"""Availability while versions change: the real server, clients hammering ``latest`` over REST
and gRPC, and N version swaps, for both version policies side by side.

The server serves two copies of one model: ``ap`` (availability_preserving, the default) and
``rp`` (``--version_policy_per_model=rp:resource_preserving``). Each swap publishes version
v+1 of both (copied to a staging directory and renamed into place) and deletes version v-1;
the swap ends when v+1 is the only AVAILABLE version of both. Reported per model: requests,
failed requests, and the longest gap (from the last success before a run of failures to the
next success), in total and per swap.

    python -m benchmarks.reliability_swaps [--swaps=20] [--model=PATH] [--json=out.json]

Expected: ``ap`` 0 failed requests; ``rp`` a short window per swap (the old version is
unloaded before the new one loads).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from benchmarks import models
from benchmarks.versions import publish

MODELS = ("ap", "rp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client(threading.Thread):
    """Calls predict on ``latest`` of one model over one transport until stopped; records
    (end time, success) per request."""

    def __init__(self, model: str, transport: str, rest_port: int, grpc_port: int) -> None:
        super().__init__(name=f"client-{model}-{transport}", daemon=True)
        self.model, self.transport = model, transport
        self.rest_port, self.grpc_port = rest_port, grpc_port
        self.stop = threading.Event()
        self.events: list[tuple[float, bool]] = []
        self.errors: dict[str, int] = {}

    def _record(self, ok: bool, error: str = "") -> None:
        self.events.append((time.monotonic(), ok))
        if not ok:
            self.errors[error] = self.errors.get(error, 0) + 1

    def run(self) -> None:
        if self.transport == "REST":
            import httpx

            body = b'{"instances": [[2.0]]}'
            url = f"http://127.0.0.1:{self.rest_port}/v1/models/{self.model}:predict"
            with httpx.Client(timeout=30) as client:
                while not self.stop.is_set():
                    try:
                        r = client.post(url, content=body)
                        self._record(r.status_code == 200, str(r.status_code))
                    except httpx.HTTPError as exc:
                        self._record(False, type(exc).__name__)
            return
        import grpc
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        with grpc.insecure_channel(f"localhost:{self.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self.stop.is_set():
                try:
                    stub.Predict(request, timeout=30)
                    self._record(True)
                except grpc.RpcError as exc:
                    self._record(False, str(exc.code()))  # type: ignore[attr-defined]


def gaps(events: list[tuple[float, bool]]) -> list[tuple[float, float, int]]:
    """Runs of failures as (last success before, next success after, failures in the run)."""
    found = []
    last_ok: float | None = None
    failures = 0
    for t, ok in sorted(events):
        if not ok:
            failures += 1
        else:
            if failures and last_ok is not None:
                found.append((last_ok, t, failures))
            last_ok, failures = t, 0
    return found


def summarize(
    events: list[tuple[float, bool]], start: float = -float("inf"), end: float = float("inf")
) -> dict[str, Any]:
    """Requests and failures ending in [start, end], and the longest gap that began there."""
    window = [e for e in events if start <= e[0] <= end]
    longest = max((b - a for a, b, _ in gaps(events) if start <= a <= end), default=0.0)
    return {
        "requests": len(window),
        "failed": sum(1 for _, ok in window if not ok),
        "longest_gap_s": round(longest, 4),
    }


def available(rest_port: int, model: str) -> list[int]:
    import httpx

    try:
        r = httpx.get(f"http://127.0.0.1:{rest_port}/v1/models/{model}", timeout=30)
    except httpx.HTTPError:  # not listening yet
        return []
    if r.status_code != 200:
        return []
    return sorted(
        int(s["version"]) for s in r.json()["model_version_status"] if s["state"] == "AVAILABLE"
    )


def wait_until(predicate: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def run(
    swaps: int, model: pathlib.Path, poll_seconds: int = 1, keep_log: pathlib.Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pyserving-swaps-") as tmp:
        repo = pathlib.Path(tmp)
        for name in MODELS:
            (repo / name).mkdir()
            publish(model, repo / name, 1)
        config = repo / "models.config"
        config.write_text(
            "model_config_list {\n"
            + "".join(f'  config {{ name: "{n}" base_path: "{repo / n}" }}\n' for n in MODELS)
            + "}\n"
        )
        rest_port, grpc_port = free_port(), free_port()
        log = open(repo / "server.log", "wb")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyserving",
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
                f"--model_config_file={config}",
                f"--file_system_poll_wait_seconds={poll_seconds}",
                "--version_policy_per_model=rp:resource_preserving",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        )
        clients: list[Client] = []
        try:
            wait_until(lambda: all(available(rest_port, m) == [1] for m in MODELS), "start-up")
            clients = [Client(m, t, rest_port, grpc_port) for m in MODELS for t in ("REST", "gRPC")]
            for client in clients:
                client.start()
            windows = []
            for swap in range(1, swaps + 1):
                new = swap + 1
                start = time.monotonic()
                for name in MODELS:
                    publish(model, repo / name, new)
                    if (repo / name / str(swap - 1)).exists():
                        shutil.rmtree(repo / name / str(swap - 1))
                wait_until(
                    lambda new=new: all(available(rest_port, m) == [new] for m in MODELS),
                    f"swap {swap}",
                )
                windows.append((start, time.monotonic()))
                print(f"swap {swap}: version {new} serving after {windows[-1][1] - start:.2f}s")
        finally:
            for client in clients:
                client.stop.set()
            for client in clients:
                client.join(60)
            server.send_signal(signal.SIGTERM)
            server.wait(120)
            log.close()
            if keep_log is not None:
                shutil.copyfile(repo / "server.log", keep_log)
    result: dict[str, Any] = {"swaps": swaps, "model": str(model), "models": {}}
    for name in MODELS:
        events = sorted(e for c in clients if c.model == name for e in c.events)
        errors: dict[str, int] = {}
        for c in clients:
            if c.model == name:
                for k, v in c.errors.items():
                    errors[f"{c.transport} {k}"] = errors.get(f"{c.transport} {k}", 0) + v
        total = summarize(events)
        per_swap = [summarize(events, s, e) for s, e in windows]
        result["models"][name] = {**total, "errors": errors, "per_swap": per_swap}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument(
        "--model",
        type=pathlib.Path,
        default=None,
        help="a SavedModel version directory (default: saved_model_half_plus_two_cpu's)",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None)
    parser.add_argument("--server-log", type=pathlib.Path, default=None, help="keep it here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pyserving-swaps-model-") as tmp:
        model = args.model
        if model is None:  # TF Serving's when present, else exported for this run
            model = models.half_plus_two_base(pathlib.Path(tmp)) / "00000123"
        result = run(args.swaps, model, keep_log=args.server_log)
    for name, policy in (("ap", "availability_preserving"), ("rp", "resource_preserving")):
        r = result["models"][name]
        gaps = [s["longest_gap_s"] for s in r["per_swap"]]
        failed = [s["failed"] for s in r["per_swap"]]
        print(
            f"{policy}: {r['failed']} of {r['requests']} requests failed; longest gap "
            f"{r['longest_gap_s'] * 1000:.0f} ms; per swap: failed max {max(failed)}, "
            f"gap median {sorted(gaps)[len(gaps) // 2] * 1000:.0f} ms; errors {r['errors']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["models"]["ap"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
