"""Real object-store servers for the tests, started by them on loopback ports.

- :class:`S3Server`: moto's S3 server (``moto[server]``'s ``ThreadedMotoServer``), in this
  process; it can be stopped and started again on the same port (its buckets live in the
  process, so they survive), to play an outage.
- :class:`GcsServer`: ``gcp-storage-emulator``, in this process.
- :class:`AzuriteServer`: Azurite's blob service (the npm package ``azurite``), a child
  process; ``.ci/run`` installs it when missing.

Each gives the environment a pyserving process needs to reach it (``env``), a base URL
(``url(prefix)``) and an fsspec filesystem to publish models with, built from explicit
options so this process's environment is never changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

#: Deliberately distinctive credentials: tests check they never show in logs or statuses.
AWS_KEY_ID = "AKIAPYSERVINGTEST0001"
AWS_SECRET = "pyserving-test-secret/Zm9vYmFyYmF6"
#: Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def required_tool(name: str, *candidates: str) -> str:
    """The path of an external program the tests need: skipped (with how to install it)
    when absent, except in CI (``CI`` set), where ``.ci/run`` installs it and absence fails."""
    for candidate in (*candidates, shutil.which(name)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} not found (bash .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Store:
    """What every store server offers the tests."""

    scheme = ""
    env: dict[str, str]
    fs: Any

    def url(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    def upload(self, local: pathlib.Path, path: str, only: Iterable[str] | None = None) -> None:
        """Copy the files under ``local`` to ``path`` in the store (``only``: those relative
        names, in that order)."""
        names = list(only) if only is not None else files_of(local)
        for name in names:
            self.fs.put_file(str(local / name), f"{path}/{name}")

    def delete(self, path: str) -> None:
        self.fs.rm(path, recursive=True)

    def stop(self) -> None:
        raise NotImplementedError


def files_of(directory: pathlib.Path) -> list[str]:
    """The relative names of every file under ``directory``, sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


class S3Server(Store):
    scheme = "s3"

    def __init__(self, bucket: str = "models") -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }
        import s3fs

        self.fs = s3fs.S3FileSystem(
            key=AWS_KEY_ID,
            secret=AWS_SECRET,
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": "us-east-1"},
            skip_instance_cache=True,
            use_listings_cache=False,
        )
        import boto3

        boto3.client(
            "s3",
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=AWS_SECRET,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        self.bucket = bucket

    def pause(self) -> None:
        """Stop answering (the port refuses connections) until :meth:`resume`."""
        self._server.stop()

    def resume(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_for_port(self.port)

    def stop(self) -> None:
        self._server.stop()


class GcsServer(Store):
    scheme = "gs"

    def __init__(self, bucket: str = "models") -> None:
        from gcp_storage_emulator.server import create_server

        self.port = free_port()
        self._server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=bucket)
        self._server.start()
        wait_for_port(self.port)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"STORAGE_EMULATOR_HOST": self.endpoint}
        from gcsfs.core import GCSFileSystem

        self.fs = GCSFileSystem(
            token="anon",
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
            use_listings_cache=False,
        )
        self.bucket = bucket

    def stop(self) -> None:
        self._server.stop()


class AzuriteServer(Store):
    """Azurite's blob service. By default plain HTTP, reached with a connection string
    (``AZURE_STORAGE_CONNECTION_STRING`` with ``BlobEndpoint=``). With ``tls``, HTTPS with a
    certificate from a test CA, reached with no connection string: the account name and key
    (``AZURE_STORAGE_ACCOUNT_NAME``/``_KEY``), the endpoint from ``AZURE_STORAGE_ACCOUNT_HOST``
    and the CA from ``SSL_CERT_FILE`` (``ca_file``)."""

    scheme = "az"

    def __init__(self, container: str = "models", *, tls: bool = False) -> None:
        binary = required_tool(
            "azurite-blob",
            os.environ.get("AZURITE_BLOB", ""),
            str(pathlib.Path(__file__).resolve().parents[1] / "node_modules/.bin/azurite-blob"),
        )
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="azurite-")
        tls_args: list[str] = []
        if tls:
            from tests.certs import CertificateAuthority

            ca = CertificateAuthority()
            pair = ca.issue("localhost", server=True)
            self.ca_file = os.path.join(self._dir, "ca.pem")
            for name, data in (("ca.pem", ca.cert), ("cert.pem", pair.cert), ("key.pem", pair.key)):
                pathlib.Path(self._dir, name).write_bytes(data)
            tls_args = [f"--cert={self._dir}/cert.pem", f"--key={self._dir}/key.pem"]
        self._process = subprocess.Popen(
            [
                binary,
                "--blobHost=127.0.0.1",
                f"--blobPort={self.port}",
                f"--location={self._dir}/data",
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                *tls_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        self.bucket = container
        if tls:
            self.account_host = f"127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
            self.endpoint = f"https://{self.account_host}"
            self.env = {
                "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
                "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
                "AZURE_STORAGE_ACCOUNT_HOST": self.account_host,
                "SSL_CERT_FILE": self.ca_file,
            }
            self.fs = _BlobFiles(self.endpoint, self.ca_file)
        else:
            self.endpoint = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
            connection = (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint};"
            )
            self.env = {"AZURE_STORAGE_CONNECTION_STRING": connection}
            from adlfs import AzureBlobFileSystem

            self.fs = AzureBlobFileSystem(
                connection_string=connection, skip_instance_cache=True, use_listings_cache=False
            )
        self.fs.mkdir(container)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


class _BlobFiles:
    """The fsspec calls the tests publish with (``mkdir``, ``put_file``, ``rm``) over
    azure-storage-blob's synchronous client, which can be given the test CA
    (``connection_verify``) where adlfs's client cannot, in this process."""

    def __init__(self, account_url: str, ca_file: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self._service = BlobServiceClient(
            account_url,
            credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
            connection_verify=ca_file,
        )

    def mkdir(self, container: str) -> None:
        self._service.create_container(container)

    def put_file(self, lpath: str, rpath: str) -> None:
        container, _, blob = rpath.partition("/")
        with open(lpath, "rb") as f:
            self._service.get_container_client(container).upload_blob(blob, f, overwrite=True)

    def rm(self, path: str, recursive: bool = False) -> None:
        container, _, prefix = path.partition("/")
        client = self._service.get_container_client(container)
        for blob in client.list_blobs(name_starts_with=prefix.rstrip("/") + "/"):
            client.delete_blob(blob.name)


def publish(
    store: Store,
    local: pathlib.Path,
    path: str,
    *,
    last: Sequence[str] = ("saved_model.pb",),
    pause: float = 0.0,
) -> None:
    """Upload a version directory in an unhelpful order: ``variables/`` first, then the other
    files, ``last`` at the very end, ``pause`` seconds between the three groups (the pause
    plays a slow publisher; nothing waits on it)."""
    names = files_of(local)
    groups = [
        [n for n in names if n.startswith("variables/")],
        [n for n in names if not n.startswith("variables/") and n not in last],
        [n for n in names if n in last],
    ]
    for index, group in enumerate(groups):
        if index and pause:
            time.sleep(pause)
        store.upload(local, path, group)


@dataclasses.dataclass
class CutRule:
    """What :class:`CuttingProxy` does to requests whose request line matches ``pattern``:
    the first ``times`` responses get their head and only ``keep_bytes`` bytes of their body
    passed back, then both connections are closed; after those, with ``hold``, each request
    waits (is not forwarded) until :meth:`CuttingProxy.release`. ``cuts`` and ``held`` count
    what happened (``held``: requests waiting now)."""

    pattern: str
    keep_bytes: int
    times: int = 1
    hold: bool = False
    cuts: int = 0
    held: int = 0


class CuttingProxy:
    """An HTTP/1.1 proxy on a loopback port in front of ``upstream_port`` that cuts chosen
    responses midway (the network failing in the middle of a download) and can hold chosen
    requests back, all decided by what is sent (request lines, byte counts), never by timing.

    Every request is forwarded unchanged on one upstream connection per client connection
    and its response passed back whole, except as the first :class:`CutRule` (from
    :meth:`cut`) whose pattern matches the request line says. ``requests`` records every
    ``(request line, Range header)``. Bodies are framed by ``Content-Length`` or chunked
    encoding (request bodies by ``Content-Length`` only)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rules: list[CutRule] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def cut(self, pattern: str, keep_bytes: int, times: int = 1, hold: bool = False) -> CutRule:
        """Add a rule (see :class:`CutRule`); returns it, to read its counts."""
        rule = CutRule(pattern, keep_bytes, times, hold)
        with self._lock:
            self.rules.append(rule)
        return rule

    def release(self) -> None:
        """Let every held request through, and hold none from now on."""
        self._released.set()

    def requests_matching(self, pattern: str) -> list[tuple[str, str]]:
        """The ``(request line, Range header)`` of the requests whose line matches."""
        with self._lock:
            return [r for r in self.requests if re.search(pattern, r[0])]

    def close(self) -> None:
        self._closed = True
        self._released.set()
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            _close_socket(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _decide(self, line: str) -> tuple[CutRule | None, str]:
        """For a request line: the first rule matching it (or None) and what to do:
        ``"cut"``, ``"hold"`` or ``"pass"``."""
        with self._lock:
            for rule in self.rules:
                if re.search(rule.pattern, line):
                    if rule.cuts < rule.times:
                        rule.cuts += 1
                        return rule, "cut"
                    if rule.hold and not self._released.is_set():
                        rule.held += 1
                        return rule, "hold"
                    return rule, "pass"
        return None, "pass"

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        with self._lock:
            self._sockets.add(client)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets.add(upstream)
            from_client = client.makefile("rb")
            from_upstream = upstream.makefile("rb")
            while True:
                head = _read_head(from_client)
                if head is None:
                    return
                line, headers = _parse_head(head)
                body = from_client.read(int(headers.get("content-length", "0")))
                with self._lock:
                    self.requests.append((line, headers.get("range", "")))
                rule, action = self._decide(line)
                if rule is not None and action == "hold":
                    self._released.wait()
                    with self._lock:
                        rule.held -= 1
                upstream.sendall(head + body)
                response = _read_head(from_upstream)
                if response is None:
                    return
                client.sendall(response)
                status_line, response_headers = _parse_head(response)
                status = int(status_line.split()[1])
                if line.startswith("HEAD ") or status in (204, 304) or status < 200:
                    continue
                limit = rule.keep_bytes if rule is not None and action == "cut" else None
                if not _forward_body(from_upstream, client, response_headers, limit):
                    return
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    _close_socket(s)
                    with self._lock:
                        self._sockets.discard(s)


def _close_socket(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def _read_head(stream: Any) -> bytes | None:
    """An HTTP message head (through the blank line), None at end of stream."""
    lines = []
    while True:
        line = stream.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    first, *rest = head.decode("latin-1").split("\r\n")
    headers = {}
    for field in rest:
        name, sep, value = field.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return first, headers


def _forward_body(
    source: Any, client: socket.socket, headers: dict[str, str], limit: int | None
) -> bool:
    """Pass a response body on (at most ``limit`` bytes of it, then False: cut). False also
    when the body runs to the end of the connection."""
    sent = 0

    def send(data: bytes) -> bool:
        nonlocal sent
        if limit is not None and sent + len(data) >= limit:
            client.sendall(data[: limit - sent])
            return False
        client.sendall(data)
        sent += len(data)
        return True

    if "content-length" in headers:
        remaining = int(headers["content-length"])
        while remaining:
            data = source.read(min(remaining, 65536))
            if not data:
                return False
            remaining -= len(data)
            if not send(data):
                return False
        return True
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = source.readline(65536)
            if not send(size_line):
                return False
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:
                    trailer = source.readline(65536)
                    if not send(trailer) or trailer in (b"\r\n", b"\n", b""):
                        return bool(trailer)
            if not send(source.read(size + 2)):
                return False
    while True:
        data = source.read1(65536)
        if not data or not send(data):
            return False
