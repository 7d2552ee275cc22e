"""Fixtures shared by the front-end tests of this directory."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from tensorflow_serving.config import model_server_config_pb2

from pyserving.core.manager import ManagerOptions
from pyserving.server.core import ServerCore, ServerCoreOptions


@pytest.fixture(scope="module")
def core(testdata: pathlib.Path) -> Iterator[ServerCore]:
    """A ServerCore serving ``half_plus_two`` (one per test module; a module may define
    its own ``core``)."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = "half_plus_two"
    model.base_path = str(testdata / "saved_model_half_plus_two_cpu")
    model.model_platform = "tensorflow"
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1), file_system_poll_wait_seconds=0
    )
    with ServerCore(options) as c:
        c.reload_config(config)
        yield c
