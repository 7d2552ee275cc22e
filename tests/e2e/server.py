"""Start the real ``pyserving`` command on free ports and talk to it (for end-to-end tests)."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    """A ``python -m pyserving`` subprocess with its ports, log file and an HTTP client.

    ``env``: variables added to this process's environment; ``grpc_port``/``rest_port``:
    fixed ports (default: free ones)."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: pathlib.Path,
        rest: bool = True,
        *,
        env: Mapping[str, str] | None = None,
        grpc_port: int | None = None,
        rest_port: int | None = None,
    ) -> None:
        self.grpc_port = grpc_port or free_port()
        self.rest_port = (rest_port or free_port()) if rest else 0
        self.log_path = log_path
        cmd = [sys.executable, "-m", "pyserving", f"--port={self.grpc_port}"]
        if rest:
            cmd.append(f"--rest_api_port={self.rest_port}")
        cmd.extend(args)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the gRPC port accepts connections (it opens once models settled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                port = self.rest_port or self.grpc_port
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


def run_to_exit(args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pyserving ARGS`` expecting it to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "pyserving", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
