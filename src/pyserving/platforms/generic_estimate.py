"""RAM estimates of the non-TensorFlow platforms: TF Serving's rule (1.2 x the version's
files) plus a per-platform overhead: what loading a model costs beyond its weights (the
runtime's session or arena, the classes a pickle imports, a deserialized program's graph).

The overheads were measured as the growth of the process's resident set over the first load
of each platform's example model (``examples/platforms.py``) in a fresh process, the runtime
already imported, after ``gc.collect()`` and ``malloc_trim(0)`` (``python -m
benchmarks.platform_ram``), and rounded up by about 10% so that the estimate stays an upper
bound; later loads of the same platform in one process cost less (imports and caches are
shared). ``tests/platforms/test_ram_estimates.py`` fails when an estimate leaves 0.75-1.25
of the measured growth. Cheap: only the directory's file sizes are read.
"""

from __future__ import annotations

from pyserving.core.loader import ResourceEstimate, estimate_from_disk

MIB = 1 << 20


def estimate(path: str, overhead_bytes: int) -> ResourceEstimate:
    """1.2 x the size of ``path``'s files plus ``overhead_bytes`` of RAM."""
    return estimate_from_disk(path) + ResourceEstimate(ram_bytes=overhead_bytes)
