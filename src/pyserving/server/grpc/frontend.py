"""Starting the gRPC front end: pyserving's HTTP/2 server unless grpcio is needed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyserving.server.grpc.options import GrpcServerOptions, uses_grpcio

if TYPE_CHECKING:
    from pyserving.server.loop_server import LoopServer
    from pyserving.server.service import ModelServing

log = logging.getLogger(__name__)


def start_grpc_server(serving: ModelServing, options: GrpcServerOptions) -> LoopServer:
    """Build, bind and start the gRPC server over ``serving``: pyserving's HTTP/2 server
    (``h2.py``) unless :func:`~pyserving.server.grpc.options.uses_grpcio`, else grpcio's
    ``grpc.aio`` (``aio.py``). Both serve the same :class:`~.service.GrpcService`.

    Raises :class:`~pyserving.errors.InvalidArgument` for malformed channel arguments and
    ``RuntimeError`` when a listening address cannot be bound. The health service (when
    enabled) starts as SERVING, as TF Serving's default health service: the server is
    started once the models are loaded.
    """
    if not uses_grpcio(options):
        from pyserving.server.grpc.h2 import start_h2_grpc_server

        return start_h2_grpc_server(serving, options)
    if not options.grpcio:
        log.info(
            "gRPC served by grpcio: --grpc_channel_arguments names arguments only grpcio "
            "applies (%s)",
            options.channel_arguments,
        )
    from pyserving.server.grpc.aio import start_aio_grpc_server

    return start_aio_grpc_server(serving, options)


__all__ = ["start_grpc_server"]
