"""Nothing stays referenced after a version is unloaded: real SavedModels, the real ServerCore.

Five reload cycles (publish version i+1, delete version i, poll): after each, the unloaded
version's servable, its loader, its TensorFlow graph and session, and its compiled callables
are garbage collected (weak references to them are dead). Memory figures over many cycles are
in ``benchmarks/reliability_memory.py``; this test checks references, not bytes.
"""

from __future__ import annotations

import gc
import pathlib
import weakref
from typing import Any

import numpy as np
from benchmarks.versions import publish, swap_version

from pyserving.config import single_model_config
from pyserving.core.manager import ManagerOptions
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.service import ModelServing, ModelSpec

CYCLES = 5


def weak_parts(core: ServerCore, version: int) -> dict[str, weakref.ref[Any]]:
    """Weak references to everything one loaded version holds."""
    with core.handle("m", version) as handle:
        servable = handle.servable
    harness = core.manager._harnesses["m"][version]  # the loader chain, outermost first
    runner = servable._runner
    refs: dict[str, weakref.ref[Any]] = {
        "servable": weakref.ref(servable),
        "loader": weakref.ref(harness.loader),
        "runner": weakref.ref(runner),
        "graph": weakref.ref(runner._graph),
        "session": weakref.ref(runner._session),
    }
    for i, fn in enumerate(servable._callables.values()):
        refs[f"callable{i}"] = weakref.ref(fn)
    return refs


def test_unloaded_versions_are_garbage_collected(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    model = testdata / "saved_model_half_plus_two_cpu" / "00000123"
    base = tmp_path / "m"
    base.mkdir()
    publish(model, base, 1)
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1, num_unload_threads=1),
        file_system_poll_wait_seconds=0,
        settle_timeout=60,
    )
    config = single_model_config("m", str(base))
    inputs = {"x": np.array([[2.0]], np.float32)}
    with ServerCore(options) as core:
        serving = ModelServing(core)
        core.reload_config(config)
        for old in range(1, CYCLES + 1):
            new = old + 1
            with serving.bind(ModelSpec("m")) as bound:
                result = bound.predict(inputs).result()
            assert result.id.version == old and result.outputs["y"].tolist() == [[3.0]]
            refs = weak_parts(core, old)
            assert any(name.startswith("callable") for name in refs)
            del result, bound
            assert swap_version(core, config, model, base, old, new, timeout=60)
            assert core.manager.wait_until_idle(timeout=60)
            gc.collect()
            alive = sorted(name for name, ref in refs.items() if ref() is not None)
            assert alive == [], f"version {old} still referenced after unload: {alive}"
        assert core.manager.available_versions("m") == [CYCLES + 1]
