"""The TF-Serving-compatible gRPC front end: one service, two transports.

* ``service.py``: every method the gRPC port serves, transport-agnostic (messages in,
  messages out); ``calls.py``: what a method is and how errors become a status;
  ``health.py``: ``grpc.health.v1.Health``;
* ``h2.py``: the transport on pyserving's own HTTP/2 server (the default);
* ``aio.py``: the transport on grpcio's ``grpc.aio`` (``--grpc_frontend=grpcio``);
* ``options.py``: options, channel arguments, TLS; ``frontend.py``: which transport starts.
"""

from __future__ import annotations

from pyserving.server.grpc.frontend import start_grpc_server
from pyserving.server.grpc.options import (
    GrpcServerOptions,
    GrpcTls,
    parse_channel_arguments,
    read_ssl_config_file,
    uses_grpcio,
)

__all__ = [
    "GrpcServerOptions",
    "GrpcTls",
    "parse_channel_arguments",
    "read_ssl_config_file",
    "start_grpc_server",
    "uses_grpcio",
]
