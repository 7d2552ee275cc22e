"""freeze_startup_objects: the import-time heap is frozen, models loaded later stay collectable.

Runs in a fresh interpreter, because freezing is once per process and would change the heap
of the test process itself.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, sys, weakref
    from pyserving.server.app import freeze_startup_objects
    from pyserving.platforms.tensorflow.loader import SavedModelLoader

    freeze_startup_objects()
    frozen = gc.get_freeze_count()
    loader = SavedModelLoader(sys.argv[1])
    loader.load()
    servable = weakref.ref(loader.servable())
    loader.unload()
    print(frozen, servable() is None)
    """
)


def test_startup_heap_is_frozen_and_later_models_are_freed(testdata: pathlib.Path) -> None:
    version = next((testdata / "saved_model_half_plus_two_cpu").iterdir())
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(version)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    frozen, freed = done.stdout.split()
    assert int(frozen) > 100_000  # TensorFlow's import-time objects
    assert freed == "True"  # the unloaded version's servable was collected
