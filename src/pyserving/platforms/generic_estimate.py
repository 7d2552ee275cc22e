"""RAM estimates of the non-TensorFlow platforms: TF Serving's rule (1.2 x the version's
files) plus a per-platform overhead: what loading a model costs beyond its weights (the
runtime's session or arena, the classes a pickle imports, a deserialized program's graph).

The overheads were measured as the growth of the process's resident set over one load of
each platform's example model (``examples/platforms.py``) after the runtime was imported,
and rounded up by about 10-15% so that the estimate stays an upper bound; later loads of the
same platform in one process usually cost less (imports and caches are shared). Cheap: only
the directory's file sizes are read.
"""

from __future__ import annotations

from pyserving.core.loader import ResourceEstimate, estimate_from_disk

MIB = 1 << 20


def estimate(path: str, overhead_bytes: int) -> ResourceEstimate:
    """1.2 x the size of ``path``'s files plus ``overhead_bytes`` of RAM."""
    return estimate_from_disk(path) + ResourceEstimate(ram_bytes=overhead_bytes)
