"""``tensorflow.ProfilerService`` on the gRPC port, as TF Serving serves it.

``tf.profiler.experimental.client.trace(grpc_address, logdir, duration_ms)`` (and
TensorBoard's profile plugin "capture profile" button) call ``Profile`` on the server's gRPC
address. The server then traces its own TensorFlow work (the host tracer: ops, functions,
executor activity of every thread; Python tracing when the request asks for it) for
``opts.duration_ms`` and writes the trace as ``<repository_root>/<session_id>/<host>.xplane.pb``
(an ``XSpace``), the layout TensorBoard's profile plugin opens under
``<logdir>/plugins/profile``. With ``emit_xspace`` the trace is returned in the response
instead. ``Terminate`` ends a running ``Profile`` of that session early; ``Monitor`` and the
continuous-profiling methods answer ``UNIMPLEMENTED``, as TensorFlow's own profiler server
does for ``Monitor``.

The messages come from TensorFlow's ``profiler_service.proto`` (package ``tensorflow``), of
which TensorFlow ships no Python module: they are built here, in a descriptor pool of their
own, from the field numbers of that file, on top of the ``ProfileOptions`` and ``XSpace``
messages TensorFlow does ship.

Contract: :class:`ProfilerServicer` methods take ``(request, call)`` (a
:class:`~pyserving.server.grpc.calls.Call`), raise pyserving's errors, block for the
trace's duration (the gRPC transports run them on a worker thread) and are thread-safe.
One trace runs at a time in a process (a TensorFlow limit): a second
``Profile`` while one runs answers ``UNAVAILABLE``. A call whose client went away stops
waiting within a millisecond-scale poll and answers ``CANCELLED``.
"""

from __future__ import annotations

import os
import pathlib
import socket
import tempfile
import threading
import time
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pyserving.errors import CancelledError, Internal, Unavailable, Unimplemented
from pyserving.server.grpc.calls import Call

SERVICE = "tensorflow.ProfilerService"

#: ``(name, number, type, label, type_name)`` of the messages used, after
#: ``tsl/profiler/protobuf/profiler_service.proto``.
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_T = descriptor_pb2.FieldDescriptorProto
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "ProfileRequest": [
        ("duration_ms", 1, _T.TYPE_UINT64, _OPTIONAL, ""),
        ("max_events", 2, _T.TYPE_UINT64, _OPTIONAL, ""),
        ("tools", 3, _T.TYPE_STRING, _REPEATED, ""),
        ("opts", 4, _T.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.ProfileOptions"),
        ("repository_root", 5, _T.TYPE_STRING, _OPTIONAL, ""),
        ("session_id", 6, _T.TYPE_STRING, _OPTIONAL, ""),
        ("host_name", 7, _T.TYPE_STRING, _OPTIONAL, ""),
        ("emit_xspace", 9, _T.TYPE_BOOL, _OPTIONAL, ""),
    ],
    "ProfileToolData": [
        ("name", 1, _T.TYPE_STRING, _OPTIONAL, ""),
        ("data", 2, _T.TYPE_BYTES, _OPTIONAL, ""),
    ],
    "ProfileResponse": [
        ("tool_data", 6, _T.TYPE_MESSAGE, _REPEATED, ".tensorflow.ProfileToolData"),
        ("empty_trace", 7, _T.TYPE_BOOL, _OPTIONAL, ""),
        ("xspace", 8, _T.TYPE_MESSAGE, _OPTIONAL, ".tensorflow.profiler.XSpace"),
    ],
    "TerminateRequest": [("session_id", 1, _T.TYPE_STRING, _OPTIONAL, "")],
    "TerminateResponse": [],
    "MonitorRequest": [
        ("duration_ms", 1, _T.TYPE_UINT64, _OPTIONAL, ""),
        ("monitoring_level", 2, _T.TYPE_INT32, _OPTIONAL, ""),
        ("timestamp", 3, _T.TYPE_BOOL, _OPTIONAL, ""),
    ],
    "MonitorResponse": [("data", 1, _T.TYPE_STRING, _OPTIONAL, "")],
}


def _build_messages() -> dict[str, Any]:
    from tensorflow.tsl.profiler.protobuf import profiler_options_pb2, xplane_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.Add(
        descriptor_pb2.FileDescriptorProto.FromString(profiler_options_pb2.DESCRIPTOR.serialized_pb)
    )
    # Traces hold names that are not always UTF-8 (C++ does not check): read XSpace's string
    # fields as bytes, which is the same wire format.
    xplane = descriptor_pb2.FileDescriptorProto.FromString(xplane_pb2.DESCRIPTOR.serialized_pb)
    _strings_as_bytes(xplane.message_type)
    pool.Add(xplane)
    file = descriptor_pb2.FileDescriptorProto(
        name="pyserving/profiler_service.proto",
        package="tensorflow",
        syntax="proto3",
        dependency=[profiler_options_pb2.DESCRIPTOR.name, xplane_pb2.DESCRIPTOR.name],
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field_name, number, type_, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=type_, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
        for name in (*_MESSAGES, "profiler.XSpace")
    }


def _strings_as_bytes(message_types: Any) -> None:
    for message in message_types:
        _strings_as_bytes(message.nested_type)
        if message.options.map_entry:
            continue  # map keys cannot be bytes (XPlane's maps are keyed by integers)
        for field in message.field:
            if field.type == _T.TYPE_STRING:
                field.type = _T.TYPE_BYTES


_messages: dict[str, Any] | None = None
_messages_lock = threading.Lock()


def messages() -> dict[str, Any]:
    """The message classes by name (``ProfileRequest``, ``ProfileResponse``, ...)."""
    global _messages
    with _messages_lock:
        if _messages is None:
            _messages = _build_messages()
        return _messages


def trace_is_empty(xspace: Any) -> bool:
    """True when no plane of ``xspace`` holds an event (TensorFlow's ``IsEmpty``)."""
    return not any(line.events for plane in xspace.planes for line in plane.lines)


def _session_options(opts: Any) -> dict[str, int]:
    """``ProfilerSession.start`` options from a request's ``ProfileOptions``; TensorFlow's
    defaults (host tracer level 2, device tracer on, no Python tracer) when it has none."""
    if opts.version == 0:
        return {"host_tracer_level": 2, "device_tracer_level": 1, "python_tracer_level": 0}
    return {
        "host_tracer_level": opts.host_tracer_level,
        "device_tracer_level": opts.device_tracer_level,
        "python_tracer_level": opts.python_tracer_level,
    }


def _host_name(request: Any) -> str:
    override = request.opts.advanced_configuration.get("override_hostname")
    if (
        override is not None
        and override.WhichOneof("value") == "string_value"
        and override.string_value
    ):
        return str(override.string_value)
    return str(request.host_name) or socket.gethostname()


class ProfilerServicer:
    """``tensorflow.ProfilerService``: ``Profile``, ``Terminate``, ``Monitor``."""

    #: How often a running trace checks for Terminate or a client that went away.
    poll_seconds = 0.01

    def __init__(self) -> None:
        self._busy = threading.Lock()
        self._stop_lock = threading.Lock()
        self._stopped: set[str] = set()

    def Profile(self, request: Any, call: Call) -> Any:
        from tensorflow.python.profiler.internal import _pywrap_profiler

        if not self._busy.acquire(blocking=False):
            raise Unavailable("Another profiling session is active.")
        try:
            with tempfile.TemporaryDirectory(prefix="pyserving-profile-") as scratch:
                session = _pywrap_profiler.ProfilerSession()
                try:
                    session.start(scratch, _session_options(request.opts))
                except Exception as exc:
                    raise Internal(str(exc)) from None
                duration = request.opts.duration_ms or request.duration_ms
                cancelled = self._wait(request.session_id, duration / 1000.0, call)
                session.export_to_tb()  # ends the session; writes one .xplane.pb
                if cancelled:
                    raise CancelledError("Cancelled")
                written = sorted(pathlib.Path(scratch).glob("plugins/profile/*/*.xplane.pb"))
                data = written[0].read_bytes() if written else b""
        finally:
            self._busy.release()
            with self._stop_lock:
                self._stopped.discard(request.session_id)
        response = messages()["ProfileResponse"]()
        xspace = messages()["profiler.XSpace"].FromString(data)
        response.empty_trace = trace_is_empty(xspace)
        if request.emit_xspace:
            response.xspace.CopyFrom(xspace)
            return response
        if request.repository_root:
            try:
                _save_xspace(request.repository_root, request.session_id, _host_name(request), data)
            except OSError as exc:
                raise Internal(f"Cannot save the trace: {exc}") from None
        return response

    def _wait(self, session_id: str, seconds: float, call: Call) -> bool:
        """Wait ``seconds`` unless ``Terminate`` names the session; True if the client left."""
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return False
            if call.cancelled:
                return True
            with self._stop_lock:
                if session_id in self._stopped:
                    return False
            time.sleep(min(self.poll_seconds, remaining))

    def Terminate(self, request: Any, call: Call) -> Any:
        with self._stop_lock:
            self._stopped.add(request.session_id)
        return messages()["TerminateResponse"]()

    def Monitor(self, request: Any, call: Call) -> Any:
        raise Unimplemented("unimplemented.")

    def methods(self) -> dict[str, tuple[Any, Any]]:
        """``{full path: (request class, method)}`` of the unary methods served."""
        types = messages()
        return {
            f"/{SERVICE}/Profile": (types["ProfileRequest"], self.Profile),
            f"/{SERVICE}/Terminate": (types["TerminateRequest"], self.Terminate),
            f"/{SERVICE}/Monitor": (types["MonitorRequest"], self.Monitor),
        }


def _save_xspace(repository_root: str, session_id: str, host: str, data: bytes) -> None:
    """Write ``data`` as ``<repository_root>/<session_id>/<host>.xplane.pb``; ``host`` may
    not climb out of that directory."""
    directory = pathlib.Path(repository_root) / session_id
    directory.mkdir(parents=True, exist_ok=True)
    name = host.replace(os.sep, "_").replace("..", "_") + ".xplane.pb"
    tmp = directory / (name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(directory / name)


__all__ = ["SERVICE", "ProfilerServicer", "messages", "trace_is_empty"]
