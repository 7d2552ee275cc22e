"""Import TensorFlow and initialise its devices without its C++ start-up noise.

TensorFlow's C++ runtime writes to file descriptor 2 while it is imported and when it first
enumerates devices: absl's "All log messages before absl::InitializeLog() ..." banner, the
oneDNN notice, "Could not find cuda drivers", cuInit and cuDNN/cuFFT/cuBLAS factory errors on
a machine without a GPU. ``TF_CPP_MIN_LOG_LEVEL`` does not reach these lines (they are written
before TensorFlow's own logging reads it), so a quiet start captures file descriptor 2 for
the duration of that work and writes back every line that is not a known start-up notice.

Contract:

- ``import_tensorflow(quiet=False)`` is a plain ``import tensorflow``.
- ``import_tensorflow(quiet=True)`` imports TensorFlow and lists its physical devices (the
  step that initialises CUDA) with file descriptor 2 captured; afterwards the lines that match
  :data:`NOISE` are dropped and every other captured line is written to stderr unchanged and
  in order. If the import raises, everything captured is written back before the exception
  propagates. Call it from one thread, before other threads write to stderr (the server does
  it at start-up, before serving).
- :func:`user_wants_tensorflow_logs` is true when the user asked for TensorFlow's own logs
  through its environment variables (``TF_CPP_MIN_LOG_LEVEL``, ``TF_CPP_MAX_VLOG_LEVEL`` or
  ``TF_CPP_VMODULE``): then nothing is filtered.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from types import ModuleType

#: Start-up lines of TensorFlow's C++ runtime that say nothing a CPU-only server acts on.
NOISE: tuple[re.Pattern[bytes], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        rb"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
        rb"oneDNN custom operations are on",
        rb"Could not find cuda drivers on your machine",
        rb"failed call to cuInit",
        rb"Unable to register cu(DNN|FFT|BLAS) factory",
        rb"computation placer already registered",
        rb"This TensorFlow binary is optimized to use available CPU instructions",
        rb"To enable the following instructions: .* in other operations, rebuild TensorFlow",
        rb"TF-TRT Warning: Could not find TensorRT",
        rb"Unable to initialize backend 'cuda'",
        rb"cuda_executor\.cc.*NUMA node",
    )
)

#: Environment variables through which a user asks TensorFlow for its own logs.
TF_LOG_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_CPP_VMODULE")


def user_wants_tensorflow_logs(environ: Mapping[str, str] | None = None) -> bool:
    """True when one of :data:`TF_LOG_VARIABLES` is set (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    return any(name in env for name in TF_LOG_VARIABLES)


def is_noise(line: bytes) -> bool:
    """True for a line of TensorFlow's start-up notices listed in :data:`NOISE`."""
    return any(pattern.search(line) for pattern in NOISE)


def filter_noise(captured: bytes) -> bytes:
    """``captured`` without the lines :func:`is_noise` matches (line endings kept)."""
    return b"".join(line for line in captured.splitlines(keepends=True) if not is_noise(line))


@contextlib.contextmanager
def stderr_without_noise(drop_noise: bool = True) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file, then write it back (filtered) on exit.

    On an exception nothing is dropped, so an import failure shows all TensorFlow printed.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured = sink.read()
            out = captured if failed or not drop_noise else filter_noise(captured)
            while out:
                out = out[os.write(2, out) :]


def import_tensorflow(quiet: bool) -> ModuleType:
    """Import TensorFlow (and, when ``quiet``, initialise its devices) as the module says."""
    if not quiet:
        import tensorflow as tf

        return tf
    with stderr_without_noise():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


__all__ = [
    "NOISE",
    "TF_LOG_VARIABLES",
    "filter_noise",
    "import_tensorflow",
    "is_noise",
    "stderr_without_noise",
    "user_wants_tensorflow_logs",
]
