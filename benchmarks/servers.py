"""Start, wait for and stop the processes under test (always on 127.0.0.1, free ports)."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

#: The repository root (``python -m benchmarks.*`` and ``python -m pyserving`` run from here).
ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """The environment of every child process: quieter TensorFlow, unbuffered output."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


@dataclass
class ServerProcess:
    """A server subprocess: its command, ports, log file and ``Popen``."""

    label: str
    command: list[str]
    log_path: pathlib.Path
    rest_port: int = 0
    grpc_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # added to ``child_env()``
    _log: object = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**child_env(), **self.env},
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, model_name: str, timeout: float = 180.0) -> None:
        """Wait until the model answers AVAILABLE over REST (and the gRPC port accepts)."""
        assert self.process is not None
        start = time.monotonic()
        deadline = start + timeout
        url = f"http://127.0.0.1:{self.rest_port}/v1/models/{model_name}"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if _rest_available(url) and (not self.grpc_port or _port_open(self.grpc_port)):
                self.startup_s = time.monotonic() - start
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.label} did not become ready in {timeout:g} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        return self.process.returncode


def _rest_available(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status != 200:
                return False
            status = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    versions = status.get("model_version_status", [])
    return any(v.get("state") == "AVAILABLE" for v in versions)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def pyserving_command(
    model_name: str, base_path: pathlib.Path, grpc_port: int, rest_port: int, extra: Sequence[str]
) -> list[str]:
    """``python -m pyserving`` with TF Serving's flags."""
    return [
        sys.executable,
        "-m",
        "pyserving",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_name={model_name}",
        f"--model_base_path={base_path}",
        "--file_system_poll_wait_seconds=0",
        *extra,
    ]


def fastapi_command(model_name: str, base_path: pathlib.Path, rest_port: int) -> list[str]:
    """The FastAPI baseline (``benchmarks.fastapi_server``)."""
    return [
        sys.executable,
        "-m",
        "benchmarks.fastapi_server",
        f"--port={rest_port}",
        f"--model_name={model_name}",
        f"--model_base_path={base_path}",
    ]


@contextlib.contextmanager
def running(server: ServerProcess, model_name: str) -> Iterator[ServerProcess]:
    """Start ``server``, wait until ``model_name`` is available, stop it on exit."""
    server.start()
    try:
        server.wait_ready(model_name)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def trivial_server(protocol: str, log_path: pathlib.Path) -> Iterator[ServerProcess]:
    """The trivial endpoint of ``protocol`` (``benchmarks.trivial``), started and stopped."""
    port = free_port()
    server = ServerProcess(
        label=f"trivial-{protocol}",
        command=[sys.executable, "-m", "benchmarks.trivial", protocol, f"--port={port}"],
        log_path=log_path,
        rest_port=port if protocol == "rest" else 0,
        grpc_port=port if protocol == "grpc" else 0,
    )
    server.start()
    try:
        deadline = time.monotonic() + 60
        while not _port_open(port):
            assert server.process is not None
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"trivial {protocol} server did not start:\n{server.log_tail()}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
