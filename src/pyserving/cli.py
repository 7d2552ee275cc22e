"""The ``pyserving`` / ``tensorflow_model_server`` command.

An unknown flag is reported on stderr and ignored; a value that does not parse prints the
usage and exits with status 1. ``--help`` prints the flags and ``--version`` the versions,
both without importing TensorFlow. Every TF Serving flag is accepted (the table is in
:mod:`pyserving.flags`); those pyserving does not act on yet are listed once at start-up.

With ``--num_workers=N`` (N > 1) the command supervises N server processes instead of
serving itself (:mod:`pyserving.server.workers`).

``pyserving inspect PATH`` is a sub-command: it prints what a SavedModel (or a versioned base
path) contains, like ``saved_model_cli show --all``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping, Sequence

from pyserving.flags import ParsedFlags, UsageError, parse_flags, usage


def version_text() -> str:
    """The ``--version`` text, read from installed package metadata (no TensorFlow import)."""
    from importlib import metadata

    from pyserving import __version__

    try:
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - TF is a hard dependency
        tf_version = "unavailable"
    return f"TensorFlow ModelServer: pyserving {__version__}\nTensorFlow Library: {tf_version}\n"


#: Arguments that print the usage and exit 0, as ``tensorflow_model_server --help`` does.
HELP_ARGUMENTS = frozenset({"-h", "--help", "-help", "--helpfull", "-helpfull", "--helpshort"})


#: TensorFlow reads this once, when it is imported: "0" turns its oneDNN ops off.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def apply_onednn_flag(flags: ParsedFlags, environ: MutableMapping[str, str]) -> None:
    """Set ``TF_ENABLE_ONEDNN_OPTS`` in ``environ`` from ``--tensorflow_onednn``.

    Given explicitly, the flag decides. Not given, a value already in the environment is
    kept (an operator's choice made there), and otherwise oneDNN is off: TF Serving's
    standard build runs TensorFlow's own (Eigen) kernels, which cost small dense models
    2-6x less per call than oneDNN's on the CPU (whose different summation order also
    changes last bits of answers), and measured the same on the benchmark MLP
    (docs/benchmarks.md). Must run before TensorFlow is imported; workers inherit the
    environment.
    """
    if "tensorflow_onednn" in flags.given or ONEDNN_VARIABLE not in environ:
        environ[ONEDNN_VARIABLE] = "1" if flags.tensorflow_onednn else "0"


def _import_tensorflow_for_serving() -> None:
    """Import TensorFlow before the server's modules, without its C++ start-up noise unless
    the user asked for TensorFlow's logs (see :mod:`pyserving.quiet_tensorflow`)."""
    from pyserving.quiet_tensorflow import import_tensorflow, user_wants_tensorflow_logs

    verbose = user_wants_tensorflow_logs()
    # TensorFlow's C++ INFO lines drown the server's own log; warnings and errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import_tensorflow(quiet=not verbose)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyserving`` and ``tensorflow_model_server``; returns the exit status.

    ``--help`` (``-h``) and ``--version`` answer without importing TensorFlow.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "inspect":
        _import_tensorflow_for_serving()
        from pyserving.inspect import main as inspect_main

        return inspect_main(args[1:])
    if any(arg in HELP_ARGUMENTS for arg in args):
        sys.stdout.write(usage())
        return 0
    try:
        flags = parse_flags(args)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n{usage()}")
        return 1
    for arg in flags.unknown:
        sys.stderr.write(f"unknown argument: {arg}\n")
    if flags.version:
        sys.stdout.write(version_text())
        return 0
    from pyserving.server.workers import (
        hold_worker_state_dir,
        supervise,
        watch_parent,
        worker_index,
    )

    apply_onednn_flag(flags, os.environ)
    if worker_index() is not None:
        watch_parent()
        hold_worker_state_dir()
    elif flags.num_workers > 1:
        return supervise(flags, args)
    _import_tensorflow_for_serving()
    from pyserving.server.app import run_server, server_options_from_flags

    try:
        options = server_options_from_flags(flags)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return run_server(options)


__all__ = ["ONEDNN_VARIABLE", "apply_onednn_flag", "main", "version_text"]
