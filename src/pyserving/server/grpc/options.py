"""What configures a gRPC front end: options, channel arguments, TLS, the UNIX socket file.

Shared by both transports (``h2.py``, pyserving's HTTP/2 server, and ``aio.py``, grpcio's
``grpc.aio``); nothing here serves a call.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

from pyserving.errors import InvalidArgument

#: Channel arguments pyserving's HTTP/2 front end applies; any other one selects grpcio.
SUPPORTED_CHANNEL_ARGUMENTS = frozenset(
    {
        "grpc.max_receive_message_length",
        "grpc.max_send_message_length",
        "grpc.max_concurrent_streams",
    }
)

_INT32 = re.compile(r"^\s*[+-]?\d+\s*$")


@dataclass(frozen=True)
class GrpcTls:
    """TLS for the gRPC server: TF Serving's ``SSLConfig`` (PEM text, not file names).

    ``server_key`` / ``server_cert``: the server's private key and certificate (chain).
    ``custom_ca``: PEM certificates client certificates are verified against.
    ``client_verify``: require and verify a client certificate (needs ``custom_ca``).
    """

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False

    @classmethod
    def from_ssl_config(cls, config: Any) -> GrpcTls:
        """From a ``tensorflow.serving.SSLConfig``; ``InvalidArgument`` when incomplete."""
        if not config.server_key or not config.server_cert:
            raise InvalidArgument("SSLConfig needs both server_key and server_cert (PEM text)")
        if config.client_verify and not config.custom_ca:
            raise InvalidArgument(
                "SSLConfig: client_verify needs custom_ca, the PEM certificates client "
                "certificates are verified against"
            )
        return cls(config.server_key, config.server_cert, config.custom_ca, config.client_verify)

    def credentials(self) -> Any:
        """grpcio's ``ServerCredentials`` for these key, certificate and CAs."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.server_key.encode(), self.server_cert.encode())],
            root_certificates=self.custom_ca.encode() if self.custom_ca else None,
            require_client_auth=self.client_verify,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server TLS context offering HTTP/2 (``h2``) by ALPN, as gRPC needs.
        ``RuntimeError`` when the key and certificate cannot be used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="pyserving-tls-") as directory:
            cert = os.path.join(directory, "cert.pem")
            key = os.path.join(directory, "key.pem")
            for path, text in ((cert, self.server_cert), (key, self.server_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise RuntimeError(f"Cannot use the server key and certificate: {exc}") from None
        if self.client_verify:
            context.load_verify_locations(cadata=self.custom_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols(["h2"])
        return context


def read_ssl_config_file(path: str) -> GrpcTls:
    """Read ``--ssl_config_file`` (an ``SSLConfig`` text proto).

    Raises ``ConfigError`` (``Error parsing text-format tensorflow.serving.SSLConfig: ...``)
    or ``InvalidArgument`` for an incomplete config.
    """
    from pyserving.config import read_text_proto
    from pyserving.protos import SSLConfig

    config = read_text_proto(path, SSLConfig(), "tensorflow.serving.SSLConfig")
    return GrpcTls.from_ssl_config(config)


@dataclass(frozen=True)
class GrpcServerOptions:
    """Options of the gRPC front end (TF Serving's flags in brackets).

    ``port``: TCP port on ``0.0.0.0`` [``--port``]; 0 picks a free port (the server's
    ``port`` then tells which).
    ``socket_path``: when non-empty, also listen on ``unix:<socket_path>``
    [``--grpc_socket_path``].
    ``channel_arguments``: ``"k=v,k2=v2"`` server channel arguments
    [``--grpc_channel_arguments``]; values that parse as a 32-bit integer are passed as
    ints, others as strings (see :func:`parse_channel_arguments`). They are applied after
    the message size limits, so they can override them.
    ``max_threads``: worker threads running calls that could hold the event loop
    [``--grpc_max_threads``].
    ``enable_health``: serve ``grpc.health.v1.Health`` [``--enable_grpc_healthcheck_service``].
    ``enable_profiler``: serve ``tensorflow.ProfilerService`` (``profiler_service.py``)
    [``--enable_profiler``].
    ``max_message_bytes``: limit on request and response size (TF Serving: ``INT32_MAX``).
    ``tls``: serve both addresses over TLS [``--ssl_config_file``]; ``None`` = plaintext.
    ``grpcio``: serve on grpcio's ``grpc.aio`` (``aio.py``) instead of pyserving's own
    HTTP/2 server (``h2.py``, the default) [``--grpc_frontend=grpcio``]. Channel arguments
    the HTTP/2 server does not apply (anything but :data:`SUPPORTED_CHANNEL_ARGUMENTS`)
    select grpcio too.
    ``tensor_content``: Predict outputs carry their values as raw bytes in
    ``tensor_content`` instead of the typed ``*_val`` fields (strings stay in ``string_val``)
    [``--enable_serialization_as_tensor_content``].
    """

    port: int = 8500
    socket_path: str = ""
    channel_arguments: str = ""
    max_threads: int = 8
    enable_health: bool = False
    enable_profiler: bool = True
    max_message_bytes: int = 2**31 - 1
    tls: GrpcTls | None = None
    tensor_content: bool = False
    grpcio: bool = False
    #: Bind the TCP port with ``SO_REUSEPORT`` (``--num_workers``: workers share the port;
    #: grpcio's servers always do).
    reuse_port: bool = False


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """Parse ``--grpc_channel_arguments``: a comma-separated list of ``key=value``.

    As TF Serving: a value that parses as a signed 32-bit integer (surrounding blanks
    allowed) is passed as ``int``, anything else as ``str``. The value is everything after
    the first ``=``. Empty items are skipped; an item without ``=`` or with an empty key
    raises :class:`~pyserving.errors.InvalidArgument`.
    """
    result: list[tuple[str, int | str]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument(
                f"Invalid --grpc_channel_arguments entry {item!r}: expected key=value"
            )
        if _INT32.match(value) and -(2**31) <= int(value) <= 2**31 - 1:
            result.append((key, int(value)))
        else:
            result.append((key, value))
    return result


def server_channel_args(options: GrpcServerOptions) -> tuple[dict[str, int | str], int]:
    """The server's channel arguments (message size limits, then the user's), and the
    largest decoded size of a request's inputs (the receive limit)."""
    channel_args: dict[str, int | str] = {
        "grpc.max_receive_message_length": options.max_message_bytes,
        "grpc.max_send_message_length": options.max_message_bytes,
    }
    channel_args.update(parse_channel_arguments(options.channel_arguments))
    receive_limit = channel_args["grpc.max_receive_message_length"]
    max_tensor_bytes = (
        receive_limit if isinstance(receive_limit, int) and receive_limit > 0 else 2**31 - 1
    )
    return channel_args, max_tensor_bytes


def uses_grpcio(options: GrpcServerOptions) -> bool:
    """Whether ``options`` are served by grpcio: asked for, or needed by a channel argument
    only grpcio applies. ``InvalidArgument`` for malformed channel arguments."""
    arguments = {key for key, _ in parse_channel_arguments(options.channel_arguments)}
    return options.grpcio or not arguments <= SUPPORTED_CHANNEL_ARGUMENTS


def remove_socket(path: str) -> None:
    """Remove the UNIX socket file at ``path`` ("" = none); anything else there is kept."""
    if path:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)


__all__ = [
    "SUPPORTED_CHANNEL_ARGUMENTS",
    "GrpcServerOptions",
    "GrpcTls",
    "parse_channel_arguments",
    "read_ssl_config_file",
    "remove_socket",
    "server_channel_args",
    "uses_grpcio",
]
