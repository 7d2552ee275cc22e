"""Publishing and swapping model versions, shared by the reliability benchmarks and tests."""

from __future__ import annotations

import os
import pathlib
import shutil

from pyserving.core.monitor import ManagerState, ServableStateMonitor
from pyserving.server.core import ServerCore


def publish(model: pathlib.Path, base: pathlib.Path, version: int) -> None:
    """Copy ``model`` to ``base/<version>`` via a staging directory and a rename, so the
    version appears complete at once (see docs/configuration.md, publishing a version)."""
    staging = base / f".staging-{version}"
    shutil.copytree(model, staging, copy_function=shutil.copyfile)
    for root, dirs, _files in os.walk(staging):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    os.chmod(staging, 0o755)
    staging.rename(base / str(version))


def swap_version(
    core: ServerCore,
    config: object,
    model: pathlib.Path,
    base: pathlib.Path,
    old: int,
    new: int,
    name: str = "m",
    timeout: float = 120.0,
) -> bool:
    """Publish ``new``, remove ``old``, reload ``config`` and wait until ``new`` is AVAILABLE
    and ``old`` has ended; return whether that happened within ``timeout``."""
    publish(model, base, new)
    shutil.rmtree(base / str(old))
    core.reload_config(config)  # type: ignore[arg-type]

    def swapped(m: ServableStateMonitor) -> bool:
        states = m.get_version_states(name)
        return (
            new in states
            and states[new].state is ManagerState.AVAILABLE
            and states[old].state is ManagerState.END
        )

    return core.monitor.wait_for(swapped, timeout=timeout)
