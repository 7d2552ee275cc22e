"""``tensorflow.ProfilerService`` on the gRPC port: TensorFlow's own profiler client captures a
trace of the server's work, on every gRPC front end; ``--enable_profiler=false`` removes it."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from tensorflow_serving.config import model_server_config_pb2

from pyserving.core.manager import ManagerOptions
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.grpc import GrpcServerOptions, start_grpc_server
from pyserving.server.loop_server import LoopServer
from pyserving.server.profiler_service import SERVICE, messages
from pyserving.server.service import ModelServing
from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e


def _xspace_events(path: pathlib.Path) -> set[str]:
    """Names of the events a trace file holds (its metadata, on every plane)."""
    xspace = messages()["profiler.XSpace"].FromString(path.read_bytes())
    return {
        meta.name.decode(errors="replace")
        for plane in xspace.planes
        if any(line.events for line in plane.lines)
        for meta in plane.event_metadata.values()
    }


def test_tensorflow_profiler_client_traces_the_server_while_it_serves(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import tensorflow as tf

    server = RunningServer(
        [
            "--model_name=default",
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        ],
        tmp_path / "server.log",
    )
    try:
        server.wait_ready()
        stop = threading.Event()
        answers: list[int] = []

        def predict_until_stopped() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    r = client.post("/v1/models/default:predict", json={"instances": [2.0, 3.0]})
                    answers.append(r.status_code)

        load = threading.Thread(target=predict_until_stopped)
        load.start()
        logdir = tmp_path / "logs"
        try:
            # As TF Serving's integration test does: 1 s trace, up to 10 attempts.
            tf.profiler.experimental.client.trace(
                f"localhost:{server.grpc_port}", str(logdir), 1000, "", 10
            )
        finally:
            stop.set()
            load.join()
        traces = sorted(logdir.glob("plugins/profile/*/*.xplane.pb"))
        assert len(traces) == 1, list(logdir.rglob("*"))
        events = _xspace_events(traces[0])
        # half_plus_two's graph is y = a * x + b: its ops ("node:OpType") ran inside the
        # traced window.
        op_types = {name.rpartition(":")[2] for name in events}
        assert "Mul" in op_types, sorted(events)[:50]
        assert op_types & {"Add", "AddV2"}, sorted(events)[:50]
        assert answers and set(answers) == {200}
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module", params=["http2", "grpcio"])
def grpc_target(
    request: pytest.FixtureRequest, testdata: pathlib.Path
) -> Iterator[tuple[str, ModelServing]]:
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = "default"
    model.base_path = str(testdata / "saved_model_half_plus_two_cpu")
    model.model_platform = "tensorflow"
    core = ServerCore(ServerCoreOptions(manager=ManagerOptions(), file_system_poll_wait_seconds=0))
    server: LoopServer | None = None
    try:
        core.reload_config(config)
        serving = ModelServing(core)
        server = start_grpc_server(
            serving,
            GrpcServerOptions(
                port=0,
                grpcio=request.param != "http2",
            ),
        )
        yield f"localhost:{server.port}", serving
    finally:
        if server is not None:
            server.stop(None)
        core.close()


def _call(channel: grpc.Channel, method: str, request: Any, response_type: str) -> Any:
    call = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=messages()[response_type].FromString,
    )
    return call(request, timeout=300)


def _profile_request(session_id: str, duration_ms: int, **fields: Any) -> Any:
    request = messages()["ProfileRequest"](session_id=session_id, **fields)
    request.opts.duration_ms = duration_ms
    return request


def test_profile_returns_the_trace_when_asked_and_writes_it_otherwise(
    grpc_target: tuple[str, ModelServing], tmp_path: pathlib.Path
) -> None:
    address, _ = grpc_target
    with grpc.insecure_channel(address) as channel:
        answer = _call(
            channel, "Profile", _profile_request("s1", 50, emit_xspace=True), "ProfileResponse"
        )
        assert answer.HasField("xspace")
        assert [p.name for p in answer.xspace.planes][:1] == [b"/host:CPU"]
        assert not list(tmp_path.iterdir())  # emitted, not saved
        request = _profile_request("s2", 50, repository_root=str(tmp_path), host_name="h:1")
        _call(channel, "Profile", request, "ProfileResponse")
        assert (tmp_path / "s2" / "h:1.xplane.pb").is_file()


def test_terminate_ends_a_running_trace_and_a_second_trace_waits_its_turn(
    grpc_target: tuple[str, ModelServing],
) -> None:
    address, _ = grpc_target
    with grpc.insecure_channel(address) as channel:
        result: dict[str, Any] = {}

        def long_trace() -> None:
            long = _profile_request("long", 600_000, emit_xspace=True)
            while True:
                try:
                    result["answer"] = _call(channel, "Profile", long, "ProfileResponse")
                    return
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        result["error"] = exc
                        return
                    # A short trace of the loop below held the profiler: try again.

        runner = threading.Thread(target=long_trace)
        runner.start()
        try:
            # While the 10-minute trace runs, another one is refused.
            refused = None
            deadline = time.monotonic() + 120
            while refused is None and time.monotonic() < deadline and runner.is_alive():
                try:
                    _call(channel, "Profile", _profile_request("short", 1), "ProfileResponse")
                except grpc.RpcError as exc:
                    refused = exc
            assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
            assert "Another profiling session" in (refused.details() or "")
        finally:
            _call(
                channel,
                "Terminate",
                messages()["TerminateRequest"](session_id="long"),
                "TerminateResponse",
            )
            runner.join()
        assert "error" not in result, result
        assert result["answer"].HasField("xspace")
        with pytest.raises(grpc.RpcError) as monitor:
            _call(channel, "Monitor", messages()["MonitorRequest"](), "MonitorResponse")
        assert monitor.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_enable_profiler_false_removes_the_service(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    server = RunningServer(
        [
            "--model_name=default",
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
            "--enable_profiler=false",
        ],
        tmp_path / "server.log",
        rest=False,
    )
    try:
        server.wait_ready()
        with (
            grpc.insecure_channel(f"localhost:{server.grpc_port}") as channel,
            pytest.raises(grpc.RpcError) as error,
        ):
            _call(channel, "Profile", _profile_request("x", 1), "ProfileResponse")
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert server.stop() == 0, server.log()


def test_a_trace_never_lands_outside_its_session_directory(tmp_path: pathlib.Path) -> None:
    from pyserving.server.profiler_service import _save_xspace

    _save_xspace(str(tmp_path), "run", "../../escape", b"x")
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1 and written[0].parent == pathlib.Path("run"), written
