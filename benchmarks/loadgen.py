"""Closed-loop load generator for REST (keep-alive HTTP/1.1) and gRPC, run as its own process.

``python -m benchmarks.loadgen --protocol rest|grpc|v2-rest|v2-grpc --port P --payload FILE
--concurrency 1,8,32,64 --duration 10 --warmup 2 [--server-pid PID]`` runs one point per
concurrency level, one after the other, and prints one JSON document on stdout.

Each point: ``concurrency`` workers each send a request, wait for its answer and send the
next one at once (closed loop), for ``warmup + duration`` seconds. Only requests that
complete inside the ``duration`` window count towards QPS and latency; errors count over
the whole point. The window's start and end are also where the server's CPU time is read
(``/proc/<pid>/stat``, summed over the process and its descendants: a server with
``--num_workers`` is a supervisor and its workers) and this process's own CPU time, so CPU
figures cover exactly the measured requests. The server's peak RSS (``VmHWM``, of the
process ``--server-pid`` names) is read at the end of the point.

REST: a raw asyncio client on uvloop, one keep-alive HTTP/1.1 connection per worker, the
request bytes built once, responses parsed by ``httptools`` (content-length and chunked
bodies). gRPC (``--grpc-client raw``, the default): the same kind of client for HTTP/2
(:mod:`benchmarks.h2grpc`), all workers sharing one connection (one stream per call; with
``--grpc-connections N``, N connections, workers spread over them round-robin), the
request serialized once; ``--grpc-client stub``: ``grpc.aio`` with the official
``PredictionService`` stub on one channel, as TF Serving clients do. The stub client costs
ten times the CPU per call of the raw one, CPU the server then lacks on a shared machine.
``v2-rest`` and ``v2-grpc``: the raw clients sending the Open Inference Protocol's requests
instead (REST infer with binary tensor data both ways; gRPC ModelInfer with raw contents,
as ``tritonclient`` sends them).

Answers are checked against the payload's expected output: the first answer of each worker
and every 64th one after it (a wrong answer counts as an error). Nothing here sleeps between
requests; every loop ends by itself at the point's deadline, and requests still in flight
``timeout`` seconds after it are cancelled and counted as errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from benchmarks import procstat

#: Check every Nth answer of a worker (and its first) against the expected output.
VALIDATE_EVERY = 64
#: At most this many distinct error messages are kept per point.
MAX_ERROR_SAMPLES = 5
#: The Open Inference Protocol: REST infer with binary tensor data, gRPC ModelInfer (raw).
V2_REST = "v2-rest"
V2_GRPC = "v2-grpc"


@dataclass
class Payload:
    """The request to send and the answer to expect (see ``Workload.payload``)."""

    model_name: str
    input_name: str
    output_name: str
    rows: list[list[float]]
    expected: list[list[float]] | None
    rtol: float = 1e-5
    atol: float = 1e-5

    @classmethod
    def from_file(cls, path: str) -> Payload:
        with open(path) as f:
            data = json.load(f)
        return cls(**data)

    def check(self, got: np.ndarray) -> str | None:
        """None when ``got`` matches the expected output, else what is wrong."""
        if self.expected is None:
            return None
        want = np.asarray(self.expected, np.float32)
        if got.shape != want.shape:
            return f"wrong answer shape {list(got.shape)}, want {list(want.shape)}"
        if not np.allclose(got, want, rtol=self.rtol, atol=self.atol):
            return f"wrong answer: max abs diff {float(np.max(np.abs(got - want)))}"
        return None


@dataclass
class PointState:
    """Counters and samples of one point, shared by its workers (one event loop, no locks)."""

    window_start: float
    window_end: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: dict[str, int] = field(default_factory=dict)
    validated: int = 0
    total: int = 0

    def error(self, message: str) -> None:
        self.errors += 1
        if message in self.error_samples or len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples[message] = self.error_samples.get(message, 0) + 1

    def done(self, start: float, end: float) -> None:
        self.total += 1
        if self.window_start <= end <= self.window_end:
            self.latencies.append(end - start)

    def answered(
        self, n: int, start: float, end: float, check: Callable[[Any], str | None], answer: Any
    ) -> int:
        """Record a worker's ``n``-th good answer, first checking it with ``check(answer)``
        when ``n`` is a multiple of :data:`VALIDATE_EVERY` (a wrong answer counts as an
        error instead). Returns the worker's next ``n``."""
        if n % VALIDATE_EVERY == 0:
            problem = check(answer)
            self.validated += 1
            if problem is not None:
                self.error(problem)
                return n
        self.done(start, end)
        return n + 1


# ------------------------------------------------------------------------------------------
# REST
# ------------------------------------------------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection: one request at a time."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self._parser_error = httptools.HttpParserError
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._lost: BaseException | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._parser_error as exc:
            self._fail(exc)
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed by the server")
        self._fail(self._lost)

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    @property
    def usable(self) -> bool:
        return self._lost is None and self._transport is not None

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send a complete request; the future resolves to ``(status, body)``."""
        assert self._transport is not None
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._transport.write(data)
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def rest_request_bytes(
    host: str,
    port: int,
    path: str,
    body: bytes,
    content_type: str = "application/json",
    extra_headers: str = "",
) -> bytes:
    """A complete keep-alive HTTP/1.1 POST request (``extra_headers``: CRLF-ended lines)."""
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra_headers}"
        "\r\n"
    )
    return head.encode("ascii") + body


def rest_worker_factory(
    host: str, port: int, payload: Payload, path: str, v2: bool = False
) -> Callable[[PointState, float], Awaitable[None]]:
    """Build the REST worker coroutine function for ``payload``: V1 predict with JSON rows,
    or (``v2``) a V2 infer with the binary tensor data extension both ways."""
    if v2:
        data, check = v2_rest_request(host, port, payload, path)
    else:
        body = json.dumps({"instances": payload.rows}, separators=(",", ":")).encode()
        data = rest_request_bytes(host, port, path, body)

        def check(raw: bytes) -> str | None:
            try:
                answer = json.loads(raw)
                got = np.asarray(answer["predictions"], np.float32)
            except (ValueError, KeyError, TypeError) as exc:
                return f"bad answer ({exc}): {raw[:120]!r}"
            return payload.check(got)

    async def worker(state: PointState, deadline: float) -> None:
        conn: HttpConnection | None = None
        n = 0
        try:
            while time.perf_counter() < deadline:
                if conn is None or not conn.usable:
                    try:
                        conn = await HttpConnection.open(host, port)
                    except OSError as exc:
                        state.error(f"connect: {exc}")
                        await asyncio.sleep(0.01)
                        continue
                start = time.perf_counter()
                try:
                    status, answer = await conn.request(data)
                except (OSError, ConnectionError, ValueError) as exc:
                    state.error(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = None
                    continue
                end = time.perf_counter()
                if status != 200:
                    state.error(f"HTTP {status}: {answer[:200]!r}")
                    continue
                n = state.answered(n, start, end, check, answer)
        finally:
            if conn is not None:
                conn.close()

    return worker


def v2_rest_request(
    host: str, port: int, payload: Payload, path: str
) -> tuple[bytes, Callable[[bytes], str | None]]:
    """A V2 infer request whose input and output travel as binary tensor data (as
    ``tritonclient``'s defaults send them), and the check of its answer."""
    rows = np.asarray(payload.rows, np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": payload.input_name,
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        separators=(",", ":"),
    ).encode()
    data = rest_request_bytes(
        host,
        port,
        path,
        header + rows.tobytes(),
        "application/octet-stream",
        f"Inference-Header-Content-Length: {len(header)}\r\n",
    )

    def check(raw: bytes) -> str | None:
        # The answer's JSON header is followed by the one output's bytes.
        size = 4 * int(np.prod(np.shape(payload.expected))) if payload.expected else 0
        try:
            answer = json.loads(raw[: len(raw) - size])
            output = answer["outputs"][0]
            got = np.frombuffer(raw[len(raw) - size :], np.float32).reshape(output["shape"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return f"bad answer ({exc}): {raw[:120]!r}"
        return payload.check(got)

    return data, check


# ------------------------------------------------------------------------------------------
# gRPC
# ------------------------------------------------------------------------------------------


def grpc_request(payload: Payload) -> Any:
    """The ``PredictRequest`` carrying the payload's rows as one float ``TensorProto``."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    rows = np.asarray(payload.rows, np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = payload.model_name
    request.model_spec.signature_name = "serving_default"
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in rows.shape]
        ),
    )
    tensor.float_val.extend(rows.ravel().tolist())
    request.inputs[payload.input_name].CopyFrom(tensor)
    return request


def grpc_checker(payload: Payload) -> Callable[[Any], str | None]:
    """Compare a ``PredictResponse`` with the payload's expected output."""

    def check(response: Any) -> str | None:
        if payload.expected is None:
            return None
        if payload.output_name not in response.outputs:
            return f"answer without output {payload.output_name!r}"
        out = response.outputs[payload.output_name]
        shape = [d.size for d in out.tensor_shape.dim]
        if out.tensor_content:
            got = np.frombuffer(out.tensor_content, np.float32).reshape(shape)
        else:
            got = np.asarray(out.float_val, np.float32).reshape(shape)
        return payload.check(got)

    return check


def grpc_stub_worker_factory(
    host: str, port: int, payload: Payload
) -> tuple[Callable[[PointState, float], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """Workers using the official stubs (``grpc.aio``, one shared channel), and a closer."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = grpc_request(payload)
    check = grpc_checker(payload)
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    channel = grpc.aio.insecure_channel(f"{host}:{port}", options=options)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    async def worker(state: PointState, deadline: float) -> None:
        n = 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                response = await stub.Predict(request, timeout=60)
            except grpc.aio.AioRpcError as exc:
                state.error(f"{exc.code().name}: {exc.details()}")
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await asyncio.sleep(0.01)
                continue
            end = time.perf_counter()
            n = state.answered(n, start, end, check, response)

    async def close() -> None:
        await channel.close()

    return worker, close


def v2_grpc_request(payload: Payload) -> tuple[bytes, Callable[[bytes], str | None]]:
    """A serialized V2 ``ModelInferRequest`` with ``raw_input_contents`` (as
    ``tritonclient`` sends it), and the check of its serialized answer."""
    from pyserving.server.v2.protos import MESSAGES

    rows = np.asarray(payload.rows, np.float32)
    request = MESSAGES["ModelInferRequest"](model_name=payload.model_name)
    request.inputs.add(name=payload.input_name, datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.tobytes())
    response_type = MESSAGES["ModelInferResponse"]

    def check(answer: bytes) -> str | None:
        try:
            response = response_type.FromString(answer)
            shape = list(response.outputs[0].shape)
            got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(shape)
        except Exception as exc:  # a malformed answer is an error of the point
            return f"bad answer ({exc})"
        return payload.check(got)

    return request.SerializeToString(), check


def grpc_raw_worker_factory(
    host: str, port: int, payload: Payload, v2: bool = False, connections: int = 1
) -> tuple[Callable[[PointState, float], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """Workers on raw HTTP/2 connections (:mod:`benchmarks.h2grpc`), and a closer.

    All workers share one connection (one stream per call), as with the stub client's
    channel, or with ``connections`` > 1 are spread over that many round-robin (as many
    clients would be; a server with ``--num_workers`` spreads connections, not streams);
    the request message is serialized once. ``v2``: V2's ModelInfer with raw contents
    instead of Predict.
    """
    from tensorflow_serving.apis import predict_pb2

    from benchmarks.h2grpc import GrpcCallError, GrpcConnection, Prepared

    if v2:
        message, check_raw = v2_grpc_request(payload)
        method = "/inference.GRPCInferenceService/ModelInfer"
    else:
        message = grpc_request(payload).SerializeToString()
        check = grpc_checker(payload)

        def check_raw(answer: bytes) -> str | None:
            try:
                response = predict_pb2.PredictResponse.FromString(answer)
            except Exception as exc:  # a malformed answer is an error of the point
                return f"bad answer ({exc})"
            return check(response)

        method = "/tensorflow.serving.PredictionService/Predict"
    locks = [asyncio.Lock() for _ in range(max(1, connections))]
    conns: list[GrpcConnection | None] = [None] * len(locks)
    assigned = 0

    async def connection(slot: int) -> GrpcConnection:
        async with locks[slot]:
            conn = conns[slot]
            if conn is None or not conn.usable:
                conn = conns[slot] = await GrpcConnection.open(host, port)
            return conn

    async def worker(state: PointState, deadline: float) -> None:
        nonlocal assigned
        slot = assigned % len(conns)
        assigned += 1
        n = 0
        prepared: Prepared | None = None
        while time.perf_counter() < deadline:
            c = conns[slot]
            try:
                if c is None or not c.usable:  # (re)connect under the slot's lock
                    c = await connection(slot)
            except OSError as exc:
                state.error(f"connect: {exc}")
                await asyncio.sleep(0.01)
                continue
            if prepared is None:
                prepared = c.prepare(method, message)
            start = time.perf_counter()
            try:
                answer = await c.call(prepared)
            except GrpcCallError as exc:
                state.error(f"grpc-status {exc.status}: {exc.message}")
                if exc.status == 14:
                    await asyncio.sleep(0.01)
                continue
            end = time.perf_counter()
            n = state.answered(n, start, end, check_raw, answer)

    async def close() -> None:
        for conn in conns:
            if conn is not None:
                conn.close()

    return worker, close


# ------------------------------------------------------------------------------------------
# Points
# ------------------------------------------------------------------------------------------


def _percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    ms = np.asarray(latencies) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


async def run_point(
    worker: Callable[[PointState, float], Awaitable[None]],
    concurrency: int,
    duration: float,
    warmup: float,
    server_pid: int | None,
    timeout: float,
) -> dict[str, Any]:
    """One closed-loop point: ``concurrency`` workers for ``warmup + duration`` seconds."""
    now = time.perf_counter()
    state = PointState(window_start=now + warmup, window_end=now + warmup + duration)
    tasks = [asyncio.ensure_future(worker(state, state.window_end)) for _ in range(concurrency)]

    await asyncio.sleep(max(0.0, state.window_start - time.perf_counter()))
    t0 = time.perf_counter()
    client0 = time.process_time()
    server0 = procstat.tree_cpu_seconds(server_pid) if server_pid else None
    machine = procstat.MachineCpu()
    await asyncio.sleep(max(0.0, state.window_end - time.perf_counter()))
    t1 = time.perf_counter()
    client1 = time.process_time()
    server1 = procstat.tree_cpu_seconds(server_pid) if server_pid else None
    machine_percent = machine.stop()

    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
        state.error(f"no answer within {timeout:g} s after the end of the point (cancelled)")
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            state.error(f"worker failed: {task.exception()!r}")
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pending, return_exceptions=True)

    window = t1 - t0
    requests = len(state.latencies)
    point: dict[str, Any] = {
        "concurrency": concurrency,
        "window_s": window,
        "requests": requests,
        "qps": requests / window if window > 0 else 0.0,
        "latency_ms": _percentiles(state.latencies),
        "errors": state.errors,
        "error_samples": state.error_samples,
        "validated": state.validated,
        "client_cpu_percent": 100.0 * (client1 - client0) / window,
        "client_cpu_us_per_request": (1e6 * (client1 - client0) / requests if requests else None),
    }
    if server_pid and server0 is not None and server1 is not None:
        memory = procstat.memory_bytes(server_pid)
        point["server_cpu_percent"] = 100.0 * (server1 - server0) / window
        point["server_cpu_us_per_request"] = (
            1e6 * (server1 - server0) / requests if requests else None
        )
        point["server_peak_rss_mb"] = memory["VmHWM"] / 2**20
        point["server_rss_mb"] = memory["VmRSS"] / 2**20
    # CPU used by anything but the server and this client: other load on the machine.
    point["other_cpu_percent"] = max(
        0.0,
        machine_percent - point["client_cpu_percent"] - point.get("server_cpu_percent", 0.0),
    )
    return point


async def run_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every concurrency level of ``args``, one after the other."""
    payload = Payload.from_file(args.payload)
    close: Callable[[], Awaitable[None]] | None = None
    if args.protocol == "rest":
        path = args.path or f"/v1/models/{payload.model_name}:predict"
        worker = rest_worker_factory(args.host, args.port, payload, path)
    elif args.protocol == V2_REST:
        path = args.path or f"/v2/models/{payload.model_name}/infer"
        worker = rest_worker_factory(args.host, args.port, payload, path, v2=True)
    elif args.protocol == V2_GRPC:
        worker, close = grpc_raw_worker_factory(
            args.host, args.port, payload, v2=True, connections=args.grpc_connections
        )
    elif args.grpc_client == "stub":
        worker, close = grpc_stub_worker_factory(args.host, args.port, payload)
    else:
        worker, close = grpc_raw_worker_factory(
            args.host, args.port, payload, connections=args.grpc_connections
        )
    points = []
    try:
        for concurrency in args.concurrency:
            point = await run_point(
                worker, concurrency, args.duration, args.warmup, args.server_pid, args.timeout
            )
            points.append(point)
            if args.verbose:
                lat = point["latency_ms"]
                print(
                    f"  {args.protocol} c={concurrency}: {point['qps']:.0f} qps "
                    f"p50={lat['p50']} errors={point['errors']}",
                    file=sys.stderr,
                )
    finally:
        if close is not None:
            await close()
    return points


def _concurrency_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--protocol", choices=("rest", "grpc", V2_REST, V2_GRPC), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="", help="REST path (default: the model's :predict)")
    parser.add_argument("--payload", required=True, help="JSON file (Workload.payload())")
    parser.add_argument("--concurrency", type=_concurrency_list, default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds/point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds/point")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument(
        "--grpc-client",
        choices=("raw", "stub"),
        default="raw",
        help="gRPC client: raw HTTP/2 frames (default) or the official grpcio stubs",
    )
    parser.add_argument(
        "--grpc-connections",
        type=int,
        default=1,
        help="raw gRPC client: connections the workers are spread over (default 1)",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the load generator only targets loopback addresses")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the points and print ``{"protocol": ..., "points": [...]}`` as JSON."""
    args = parse_args(argv)
    started = time.time()
    if args.protocol == "grpc" and args.grpc_client == "stub":
        # grpc.aio runs on the standard event loop.
        points = asyncio.run(run_points(args))
    else:
        import uvloop

        points = uvloop.run(run_points(args))
    json.dump(
        {
            "protocol": args.protocol,
            "grpc_client": args.grpc_client if args.protocol == "grpc" else None,
            "pid": os.getpid(),
            "started": started,
            "points": points,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
