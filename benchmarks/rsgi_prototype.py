"""The REST API on granian's RSGI interface: the alternative measured against ``http1.py``.

``python -m benchmarks.rsgi_prototype --port P --model_name NAME --model_base_path PATH``

Not part of pyserving: a prototype kept to repeat the measurement that chose the REST front
end (docs/benchmarks.md, *REST front end*). It serves pyserving's ``RestHandler`` with
granian 2.8.7 embedded in this process (one Rust runtime thread, RSGI, HTTP/1.1, access log
off) and answers a predict on the event loop as ``http1.py`` does for a fast model, so the
two differ only in the HTTP server and its interface. ``pip install granian==2.8.7`` (not a
dependency). The load generator measures it like the other servers (``--protocol rest``).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
from typing import Any

from tensorflow_serving.config import model_server_config_pb2

from pyserving.core.manager import ManagerOptions
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.rest import PendingResponse, RestHandler
from pyserving.server.service import ModelServing


class RsgiApp:
    """``RestHandler`` as an RSGI application, answering on the loop."""

    def __init__(self, handler: RestHandler) -> None:
        self.handler = handler

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        body = await protocol()
        headers = {k.lower().encode(): v.encode() for k, v in scope.headers.items()}
        response = self.handler.start(scope.method, scope.path, headers, body)
        if isinstance(response, PendingResponse):
            await asyncio.wrap_future(response.future)
            response = response.finish()
        protocol.response_bytes(
            response.status,
            [("content-type", response.content_type.decode())],
            response.body,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rsgi_prototype")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)

    import uvloop
    from granian.constants import HTTPModes, Interfaces
    from granian.server.embed import Server

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = args.model_name
    model.base_path = str(args.model_base_path.resolve())
    model.model_platform = "tensorflow"
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1), file_system_poll_wait_seconds=0
    )
    with ServerCore(options) as core:
        core.reload_config(config)
        app = RsgiApp(RestHandler(ModelServing(core)))
        server = Server(
            app,
            address="127.0.0.1",
            port=args.port,
            interface=Interfaces.RSGI,
            http=HTTPModes.http1,
            runtime_threads=1,
            log_access=False,
            backlog=2048,
        )
        uvloop.run(server.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
