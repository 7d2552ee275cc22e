"""pyserving's HTTP/1.1 REST server (``server/http1.py``) at the level of bytes on a socket.

``tests/e2e/test_rest.py``, ``test_hostile.py`` and ``test_tls.py`` run the REST API through
real clients; here a raw socket sends what those clients never do (several requests in one
write, ``Expect: 100-continue``, chunked bodies, headers that never end, garbage) against a
server in this process over the real ``half_plus_two``, and checks the bytes that come back
and that the server serves on. Time limits are made small through :class:`Http1Limits`; the
tests wait for the server to act (a closed socket, an answer), never for a wall-clock time.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from pyserving.core.clock import ManualClock
from pyserving.server.call_costs import PROBE_AFTER, CallCosts
from pyserving.server.core import ServerCore
from pyserving.server.health import install_health_routes
from pyserving.server.http1 import (
    LOOP_THREAD_NAME,
    Http1Limits,
    RestServer,
    RestServerOptions,
    listening_socket,
    start_rest_server,
)
from pyserving.server.rest import RestHandler
from pyserving.server.service import ModelServing

TIMEOUT = 30.0
PREDICT = "/v1/models/half_plus_two:predict"
BODY = b'{"instances": [[2.0]]}'


class _RecordingServing(ModelServing):
    """Records the thread each predict runs on; each call that reaches its model advances
    ``clock`` by ``cost`` (the server's CallCosts read ``clock`` and ignore failed calls, so
    the measured cost is exactly ``cost``). While ``gate`` is clear, calls wait for it (at
    most ``TIMEOUT``)."""

    def __init__(self, core: ServerCore, cost: float = 0.0) -> None:
        super().__init__(core)
        self.cost = cost
        self.clock = ManualClock()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.threads: list[str] = []

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(TIMEOUT), "test gate never opened"
        model = super().bind(*args, **kwargs)
        self.clock.advance(self.cost)
        return model


class Server:
    """A REST server in this process, with its serving, pool and options. While
    ``beside_another`` is set (every test runs both ways), a second client connection stays
    open and idle, so answers take the way they take on a busy server (written at the end
    of the loop's turn, ``server/turn_writes.py``) rather than at once."""

    beside_another = False

    def __init__(
        self,
        serving: _RecordingServing,
        *,
        limits: Http1Limits | None = None,
        probe_after: int = PROBE_AFTER,
        **options: Any,
    ) -> None:
        self.serving = serving
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="rest-worker")
        options.setdefault("max_body_bytes", 1000)
        handler = RestHandler(serving, max_body_bytes=options["max_body_bytes"])
        install_health_routes(handler, serving.core)
        self.rest: RestServer = start_rest_server(
            handler,
            self.pool,
            RestServerOptions(port=0, host="127.0.0.1", **options),
            costs=CallCosts(timer=serving.clock.monotonic, probe_after=probe_after),
            limits=limits,
        )
        self.other: socket.socket | None = None
        if self.beside_another:
            self.other = socket.create_connection(("127.0.0.1", self.rest.port), timeout=TIMEOUT)

    def connect(self) -> Client:
        return Client(self.rest.port)

    def stop(self, grace: float | None = None) -> None:
        self.rest.stop(grace)
        self.pool.shutdown(wait=True)
        if self.other is not None:
            self.other.close()


@pytest.fixture(autouse=True, params=["alone", "beside_another"])
def _other_connection(request: pytest.FixtureRequest) -> Iterator[None]:
    Server.beside_another = request.param == "beside_another"
    yield
    Server.beside_another = False


@pytest.fixture
def server(core: ServerCore) -> Iterator[Server]:
    s = Server(_RecordingServing(core))
    yield s
    s.stop()


class Client:
    """A blocking HTTP/1.1 client on a socket: send bytes, read answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """One answer: status, headers (lowercase names), body (none for a HEAD answer)."""
        status_line = self.reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100 or head:
            return status, headers, b""
        body = self.reader.read(int(headers["content-length"]))
        return status, headers, body

    def closed(self) -> bool:
        """Whether the server closed the connection (waits for it; False if data came)."""
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    fields = {"Content-Length": str(len(body))} if method == "POST" else {}
    fields.update(headers or {})
    lines += [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def predict(value: float) -> bytes:
    return request("POST", PREDICT, orjson.dumps({"instances": [[value]]}))


def answer(value: float) -> bytes:
    return orjson.dumps({"predictions": [[0.5 * value + 2.0]]})


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    c = server.connect()
    try:
        c.send(
            predict(1.0)
            + request("GET", "/v1/models/half_plus_two")
            + predict(3.0)
            + request("GET", "/v1/models/nope")
            + predict(5.0)
        )
        assert c.read()[::2] == (200, answer(1.0))
        status, _, body = c.read()
        assert status == 200 and b"AVAILABLE" in body
        assert c.read()[::2] == (200, answer(3.0))
        assert c.read()[0] == 404
        assert c.read()[::2] == (200, answer(5.0))
    finally:
        c.close()


def test_many_pipelined_requests_pause_reading_and_all_are_answered(core: ServerCore) -> None:
    s = Server(_RecordingServing(core), limits=Http1Limits(max_pipelined=2))
    c = s.connect()
    try:
        c.send(b"".join(predict(float(i)) for i in range(40)))
        for i in range(40):
            assert c.read()[::2] == (200, answer(float(i)))
    finally:
        c.close()
        s.stop()


def test_expect_100_continue(server: Server) -> None:
    c = server.connect()
    try:
        c.send(
            request(
                "POST", PREDICT, b"", {"Content-Length": str(len(BODY)), "Expect": "100-continue"}
            )
        )
        assert c.read()[0] == 100
        c.send(BODY)
        assert c.read()[::2] == (200, answer(2.0))
        c.send(predict(4.0))  # the connection serves on
        assert c.read()[::2] == (200, answer(4.0))
    finally:
        c.close()


def test_expect_100_continue_for_a_body_over_the_limit_is_413_and_close(server: Server) -> None:
    c = server.connect()
    try:
        c.send(request("POST", PREDICT, b"", {"Content-Length": "5000", "Expect": "100-continue"}))
        status, headers, body = c.read()
        assert status == 413 and headers["connection"] == "close"
        assert orjson.loads(body) == {
            "error": "Request body exceeds the limit of 1000 bytes (--rest_api_max_body_bytes)"
        }
        assert c.closed()
    finally:
        c.close()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_chunked_request_bodies(server: Server) -> None:
    c = server.connect()
    try:
        head = request("POST", PREDICT, b"", {"Transfer-Encoding": "chunked"})
        head = head.replace(b"Content-Length: 0\r\n", b"")
        c.send(head + chunked(b'{"instan', b'ces": [[', b"6.0]]}"))
        assert c.read()[::2] == (200, answer(6.0))
        # Over the limit as it streams: 413 at once, the rest is discarded, and the
        # connection serves on.
        chunk = b"258\r\n" + b" " * 600 + b"\r\n"  # 600 bytes; the limit is 1000
        c.send(head + chunk)
        c.send(chunk)
        status, _, body = c.read()
        assert status == 413, body
        c.send(b"0\r\n\r\n" + predict(8.0))
        assert c.read()[::2] == (200, answer(8.0))
    finally:
        c.close()


def test_a_body_over_the_limit_is_413_before_it_is_sent(server: Server) -> None:
    c = server.connect()
    try:
        c.send(request("POST", PREDICT, b"", {"Content-Length": "5000"}))
        assert c.read()[0] == 413  # answered before a byte of the body was sent
        c.send(b" " * 5000 + predict(1.0))  # discarded; then the next request
        assert c.read()[::2] == (200, answer(1.0))
    finally:
        c.close()


def test_head_and_options_and_health(core: ServerCore) -> None:
    s = Server(_RecordingServing(core), enable_cors=True)
    c = s.connect()
    try:
        c.send(request("GET", "/v1/models/half_plus_two"))
        status, headers, body = c.read()
        assert status == 200 and headers["access-control-allow-origin"] == "*"
        assert b"AVAILABLE" in body
        c.send(request("OPTIONS", PREDICT))
        status_options, options_headers, options_body = c.read()
        assert (status_options, options_body) == (200, b"")
        assert options_headers["access-control-allow-headers"] == "Content-Type"
        c.send(request("GET", "/v2/health/ready"))
        assert c.read()[::2] == (200, b'{"ready":true}')
    finally:
        c.close()
        s.stop()


def test_head_answers_have_no_body(server: Server) -> None:
    c = server.connect()
    try:
        c.send(request("HEAD", "/v1/models/nope") + request("GET", "/healthz"))
        status, headers, _ = c.read(head=True)
        assert status >= 400 and int(headers["content-length"]) > 0
        assert c.read()[::2] == (200, b'{"live":true}')  # not a body left over from HEAD
    finally:
        c.close()


def test_http_1_0_and_connection_close_end_the_connection(server: Server) -> None:
    for raw in (
        predict(1.0).replace(b"HTTP/1.1", b"HTTP/1.0"),
        request("POST", PREDICT, BODY, {"Connection": "close"}),
    ):
        c = server.connect()
        try:
            c.send(raw)
            status, headers, _ = c.read()
            assert status == 200 and headers["connection"] == "close"
            assert c.closed()
        finally:
            c.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"NOPE\r\n\r\n",
    ],
    ids=["tls-hello", "content-length", "no-request-line"],
)
def test_bytes_that_are_not_http_are_400_and_close(server: Server, garbage: bytes) -> None:
    c = server.connect()
    try:
        c.send(garbage)
        status, headers, body = c.read()
        assert status == 400 and headers["connection"] == "close"
        assert orjson.loads(body)["error"].startswith("Invalid HTTP request")
        assert c.closed()
    finally:
        c.close()
    ok = server.connect()
    try:
        ok.send(predict(2.0))
        assert ok.read()[::2] == (200, answer(2.0))
    finally:
        ok.close()


def test_headers_over_the_limit_are_431(core: ServerCore) -> None:
    s = Server(_RecordingServing(core), limits=Http1Limits(max_head_bytes=4096))
    c = s.connect()
    try:
        c.send(predict(1.0))  # a request in flight first: the 431 comes after its answer
        c.send(request("GET", "/healthz", b"", {f"X-{i}": "y" * 100 for i in range(50)}))
        assert c.read()[::2] == (200, answer(1.0))
        status, headers, body = c.read()
        assert status == 431 and headers["connection"] == "close"
        assert "4096 bytes" in orjson.loads(body)["error"]
        assert c.closed()
    finally:
        c.close()
        s.stop()


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # an idle keep-alive connection
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # slowloris
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
    ],
    ids=["idle", "headers", "body"],
)
def test_slow_clients_are_disconnected(core: ServerCore, partial: bytes) -> None:
    limits = Http1Limits(head_timeout=0.2, body_idle_timeout=0.2, keep_alive_timeout=0.2)
    s = Server(_RecordingServing(core), limits=limits)
    c = s.connect()
    try:
        c.send(predict(1.0))
        assert c.read()[::2] == (200, answer(1.0))
        c.send(partial)
        assert c.closed()
        assert not s.serving.threads[1:]  # the partial request never ran
    finally:
        c.close()
        s.stop()


def test_headers_that_keep_trickling_in_are_cut_off(core: ServerCore) -> None:
    """A byte now and then does not extend the time the headers have (slowloris)."""
    limits = Http1Limits(head_timeout=0.3, max_head_bytes=1 << 30)
    s = Server(_RecordingServing(core), limits=limits)
    c = s.connect()
    try:
        c.send(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        for _ in range(100_000):
            try:
                c.send(b"X: y\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            c.sock.settimeout(0.01)
            try:
                if c.sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
    finally:
        c.close()
        s.stop()


def test_request_timeout_is_504_and_the_connection_serves_on(core: ServerCore) -> None:
    serving = _RecordingServing(core)
    s = Server(serving, timeout_ms=50)
    c = s.connect()
    try:
        serving.gate.clear()  # the model never answers while the gate is closed
        c.send(predict(1.0))
        assert c.read()[::2] == (504, b'{"error":"Request timed out after 50 ms"}')
        serving.gate.set()
        c.send(request("GET", "/healthz"))
        assert c.read()[::2] == (200, b'{"live":true}')
    finally:
        serving.gate.set()
        c.close()
        s.stop()


@pytest.mark.parametrize(("cost", "on_loop"), [(0.0, True), (1e-3, False)])
def test_fast_models_run_on_the_event_loop_slow_ones_on_workers(
    core: ServerCore, cost: float, on_loop: bool
) -> None:
    serving = _RecordingServing(core, cost)
    s = Server(serving)
    c = s.connect()
    try:
        for i in range(10):
            c.send(predict(float(i)))
            assert c.read()[::2] == (200, answer(float(i)))
    finally:
        c.close()
        s.stop()
    # A model's first call is measured on a worker; later ones follow its measured cost.
    assert serving.threads[0].startswith("rest-worker")
    later = serving.threads[1:]
    if on_loop:
        assert later == [LOOP_THREAD_NAME] * 9, serving.threads
    else:
        assert all(t.startswith("rest-worker") for t in later), serving.threads


def test_large_and_compressed_predicts_run_on_workers(core: ServerCore) -> None:
    import gzip

    serving = _RecordingServing(core, 0.0)
    s = Server(serving, max_body_bytes=None)
    c = s.connect()
    try:
        for _ in range(3):
            c.send(predict(1.0))
            assert c.read()[0] == 200
        assert serving.threads[-1] == LOOP_THREAD_NAME  # measured fast
        c.send(request("POST", PREDICT, b'{"instances": [[1.0]]}' + b" " * 70_000))
        assert c.read()[::2] == (200, answer(1.0))
        c.send(request("POST", PREDICT, gzip.compress(BODY), {"Content-Encoding": "gzip"}))
        assert c.read()[::2] == (200, answer(2.0))
        assert all(t.startswith("rest-worker") for t in serving.threads[-2:]), serving.threads
    finally:
        c.close()
        s.stop()


def test_failed_calls_do_not_move_a_slow_model_onto_the_loop(core: ServerCore) -> None:
    serving = _RecordingServing(core, cost=1e-3)
    s = Server(serving, probe_after=1000)  # no call let onto the loop to measure it again
    c = s.connect()
    try:
        c.send(predict(1.0))
        assert c.read()[0] == 200
        for _ in range(30):
            c.send(request("POST", PREDICT, b'{"instances": [["nope"]]}'))
            assert c.read()[0] == 400
        c.send(predict(1.0))
        assert c.read()[0] == 200
    finally:
        c.close()
        s.stop()
    assert LOOP_THREAD_NAME not in serving.threads, serving.threads


def test_shutdown_answers_the_request_in_flight_then_closes(core: ServerCore) -> None:
    serving = _RecordingServing(core)
    s = Server(serving)
    busy, idle = s.connect(), s.connect()
    try:
        serving.gate.clear()
        busy.send(predict(1.0))
        assert serving.entered.wait(TIMEOUT)
        stopping = threading.Thread(target=s.rest.stop, args=(TIMEOUT,))
        stopping.start()
        assert idle.closed()  # an idle connection closes at once
        serving.gate.set()
        status, headers, body = busy.read()
        assert (status, body) == (200, answer(1.0)) and headers["connection"] == "close"
        assert busy.closed()
        stopping.join(TIMEOUT)
        assert not stopping.is_alive()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s.rest.port), timeout=TIMEOUT)
    finally:
        serving.gate.set()
        busy.close()
        idle.close()
        s.stop()


def test_reuse_port_lets_two_sockets_bind_one_port() -> None:
    first = listening_socket("127.0.0.1", 0, reuse_port=True)
    try:
        port = first.getsockname()[1]
        second = listening_socket("127.0.0.1", port, reuse_port=True)
        second.close()
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", port).close()  # without it: in use
    finally:
        first.close()


def test_a_port_in_use_is_an_error_naming_it(core: ServerCore) -> None:
    taken = listening_socket("127.0.0.1", 0)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(
            RuntimeError, match=f"Failed to start the REST server at 127.0.0.1:{port}"
        ):
            start_rest_server(
                RestHandler(ModelServing(core)),
                pool,
                RestServerOptions(port=port, host="127.0.0.1"),
            )
    finally:
        taken.close()
        pool.shutdown()
