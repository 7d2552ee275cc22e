"""Request names never reach the file system: proved with an audit hook.

The REST handler and the shared request path run in this thread against a real ServerCore
serving a real SavedModel. While hostile requests (names, labels and versions built to walk
out of the model repository) are handled, a ``sys.addaudithook`` hook records every file-system
event Python raises on this thread (``open``, ``os.listdir``, ``os.scandir``, ...). Once
imports are warm, handling them raises none at all: the server maps names to loaded models in
memory, never to paths.
"""

from __future__ import annotations

import functools
import pathlib
import shutil
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pyserving.config import single_model_config
from pyserving.core.manager import ManagerOptions
from pyserving.errors import ServingError
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.rest import RestHandler
from pyserving.server.service import ModelServing, ModelSpec

_recording = threading.local()
_FS_EVENTS = ("open", "os.", "shutil.", "glob.", "pathlib.")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    events = getattr(_recording, "events", None)
    if events is not None and event.startswith(_FS_EVENTS):
        events.append((event, args[:1]))


sys.addaudithook(_hook)  # hooks cannot be removed; it only records while a test asks it to


class Recording:
    def __enter__(self) -> list[tuple[str, Any]]:
        _recording.events = []
        return _recording.events  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        _recording.events = None


NAMES = [
    "..",
    "../outside",
    "../../outside",
    "../../../../../../etc/passwd",
    "/etc/passwd",
    "..\\..\\outside",
    "outside\0",
    "\0",
    "half_plus_two/../../outside",
    "%2e%2e%2foutside",
    "~",
    "~root",
    "a" * 10_000,
    "",
]


@pytest.fixture(scope="module")
def setup(
    testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ModelServing, RestHandler, pathlib.Path]]:
    tmp = tmp_path_factory.mktemp("names")
    repo = tmp / "models"
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", repo / "half_plus_two")
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", tmp / "outside")
    options = ServerCoreOptions(
        manager=ManagerOptions(run_manager_loop=True), file_system_poll_wait_seconds=0
    )
    with ServerCore(options) as core:
        core.reload_config(single_model_config("half_plus_two", str(repo / "half_plus_two")))
        serving = ModelServing(core)
        yield serving, RestHandler(serving), repo


def _predict(serving: ModelServing, spec: ModelSpec) -> None:
    with serving.bind(spec) as model:
        model.predict({"x": np.array([[2.0]], np.float32)}).result()


def hostile_requests(serving: ModelServing, handler: RestHandler) -> list[int]:
    """Every way a name reaches the server, for every hostile name; returns REST statuses."""
    statuses = []
    body = b'{"instances": [[2.0]]}'
    for name in NAMES:
        for method, path, payload in (
            ("POST", f"/v1/models/{name}:predict", body),
            ("POST", f"/v1/models/{name}:classify", b'{"examples": [{"x": 2.0}]}'),
            ("GET", f"/v1/models/{name}", b""),
            ("GET", f"/v1/models/{name}/metadata", b""),
            ("GET", f"/v1/models/{name}/versions/123", b""),
            ("POST", f"/v1/models/half_plus_two/labels/{name}:predict", body),
            ("POST", f"/v1/models/half_plus_two/versions/{name}:predict", body),
        ):
            if path == "/v1/models/":
                continue  # the empty name: this path is the model list, not a model
            statuses.append(handler.handle(method, path, {}, payload).status)
        by_name, by_label = ModelSpec(name), ModelSpec("half_plus_two", label=name or "x")
        for call in (
            functools.partial(_predict, serving, by_name),
            functools.partial(_predict, serving, by_label),
            functools.partial(serving.metadata, by_name),
            functools.partial(serving.metadata, by_label),
            functools.partial(serving.status, by_name),  # a label does not narrow status
        ):
            with pytest.raises(ServingError):
                call()
    return statuses


def test_hostile_names_touch_no_file(
    setup: tuple[ModelServing, RestHandler, pathlib.Path],
) -> None:
    serving, handler, _repo = setup
    with Recording() as warm_up:  # first round: lazy imports may read Python's own files
        hostile_requests(serving, handler)
    allowed = tuple({sys.prefix, sys.base_prefix, str(pathlib.Path(__file__).parents[2])})
    assert all(str(args[0]).startswith(allowed) for _, args in warm_up if args), warm_up
    with Recording() as events:
        statuses = hostile_requests(serving, handler)
    assert events == []
    assert all(400 <= s < 500 for s in statuses), statuses
    # The valid request still works and touches no file either.
    with Recording() as events:
        ok = handler.handle("POST", "/v1/models/half_plus_two:predict", {}, b'{"instances": [[2]]}')
    assert (ok.status, ok.body) == (200, b'{"predictions":[[3.0]]}')
    assert events == []


def test_the_hook_sees_file_access() -> None:
    """The proof above is only as good as the hook: it does see a read."""
    with Recording() as events:
        pathlib.Path(__file__).read_bytes()
    assert ("open", (__file__,)) in [(e, tuple(str(a) for a in args)) for e, args in events]
