"""A version copied slowly, through the real pipeline: FileSystemStoragePathSource ->
PathToLoaderAdapter -> AspiredVersionsManager, with the server's defaults (loads inline in the
manager's round, 5 retries 60 s apart).

Polls (``poll_once``) and manager rounds (``run_once``/``settle``) are stepped by hand; time is
a ``ManualClock(blocking=True)`` that never moves, so a load that waited for its retry interval
would hang the test instead of passing it, and "no retry interval elapsed" is
``clock.monotonic() == 0``.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections.abc import Callable, Iterator

from pyserving.core.clock import ManualClock
from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.core.manager import AspiredVersionsManager, ManagerOptions
from pyserving.core.monitor import ManagerState, ServableStateMonitor
from pyserving.core.source import ServableId, connect
from pyserving.errors import NotFound
from pyserving.sources.adapter import PathToLoaderAdapter
from pyserving.sources.filesystem import (
    SAVED_MODEL_MARKERS,
    FileSystemStoragePathSource,
    ServableSourceConfig,
)


class DirectoryLoader(Loader):
    """Loads a version directory as a SavedModel loader would need it: ``saved_model.pb`` and
    ``variables/variables.index`` must both be there. Records every attempt."""

    def __init__(self, id: ServableId, path: str, attempts: list[tuple[int, bool]]) -> None:
        self.id = id
        self.path = pathlib.Path(path)
        self.attempts = attempts
        self._servable: str | None = None

    def estimate_resources(self) -> ResourceEstimate:
        return ResourceEstimate(ram_bytes=1)

    def load(self) -> None:
        missing = [
            name
            for name in ("saved_model.pb", "variables/variables.index")
            if not (self.path / name).is_file()
        ]
        self.attempts.append((self.id.version, not missing))
        if missing:
            raise NotFound(f"{self.path} has no {missing}")
        self._servable = str(self.path)

    def unload(self) -> None:
        self._servable = None

    def servable(self) -> str:
        assert self._servable is not None
        return self._servable


class Pipeline:
    def __init__(self, base: pathlib.Path) -> None:
        self.clock = ManualClock(blocking=True)
        self.attempts: list[tuple[int, bool]] = []
        self.source = FileSystemStoragePathSource(
            [ServableSourceConfig("m", str(base), complete_markers=SAVED_MODEL_MARKERS)],
            -1,
            require_stable=True,
        )
        adapter = PathToLoaderAdapter(lambda id, path: DirectoryLoader(id, path, self.attempts))
        self.manager = AspiredVersionsManager(
            ManagerOptions(run_manager_loop=False, clock=self.clock)
        )
        self.monitor = ServableStateMonitor(self.manager.bus)
        connect(self.source, adapter)
        connect(adapter, self.manager)

    def poll(self) -> None:
        """One poll and the manager rounds it leads to."""
        self.source.poll_once()
        self.settle()
        assert self.manager.available_versions("m"), "the model must always be available"

    def settle(self) -> None:
        """Manager rounds until nothing more happens; fails (instead of hanging) if a load
        waits for its retry interval."""
        with self.in_background(self.manager.settle):
            pass

    @contextlib.contextmanager
    def in_background(self, step: Callable[[], object]) -> Iterator[None]:
        """Run ``step`` on another thread (an inline load waiting to retry blocks it) and
        check, when the block ends, that it returned."""
        stepper = threading.Thread(target=step, name="test-stepper")
        stepper.start()
        try:
            yield
        finally:
            stepper.join(30)
            assert not stepper.is_alive(), "a manager round is stuck waiting to retry a load"

    def close(self) -> None:
        self.source.close()
        self.manager.close()


@contextlib.contextmanager
def pipeline(base: pathlib.Path) -> Iterator[Pipeline]:
    p = Pipeline(base)
    try:
        yield p
    finally:
        p.close()


def write_v1(base: pathlib.Path) -> None:
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "variables" / "variables.index").write_bytes(b"index")
    (base / "1" / "saved_model.pb").write_bytes(b"graph")


def test_variables_first_copy_is_loaded_once_complete_never_before(tmp_path: pathlib.Path) -> None:
    """The reported case: variables first, saved_model.pb three polls later. Version 2 shows
    as NOT_FOUND meanwhile, with no load attempted; it loads, in one attempt, at the second
    poll after saved_model.pb arrived; version 1 serves until then."""
    write_v1(tmp_path)
    with pipeline(tmp_path) as p:
        p.poll()
        assert p.manager.available_versions("m") == [1]
        v2 = tmp_path / "2"
        (v2 / "variables").mkdir(parents=True)
        (v2 / "variables" / "variables.index").write_bytes(b"index")
        for _ in range(4):
            p.poll()
            assert p.manager.available_versions("m") == [1]
        reported = p.monitor.get_state(ServableId("m", 2))
        assert reported is not None and reported.state is ManagerState.END
        assert isinstance(reported.error, NotFound)
        assert "saved_model.pb" in reported.error.message
        (v2 / "saved_model.pb").write_bytes(b"graph")
        p.poll()  # sees saved_model.pb: not stable yet
        assert p.manager.available_versions("m") == [1]
        p.poll()  # stable: handed over and loaded in this round
        assert p.manager.available_versions("m") == [2]
        assert p.attempts == [(1, True), (2, True)]  # never attempted while incomplete
        assert p.clock.monotonic() == 0.0


def test_marker_first_copy_that_stalls_loads_as_soon_as_it_is_complete(
    tmp_path: pathlib.Path,
) -> None:
    """What the source cannot tell: saved_model.pb first, then a stall longer than a poll.
    Version 2 is handed over, fails, and waits 60 s to retry (blocking the manager's round, as
    with inline loads). Its variables arrive: at the second poll after that, the wait ends and
    the complete content loads at once, without the clock moving."""
    write_v1(tmp_path)
    with pipeline(tmp_path) as p:
        p.poll()
        v2 = tmp_path / "2"
        v2.mkdir()
        (v2 / "saved_model.pb").write_bytes(b"graph")
        p.poll()  # first sighting
        p.source.poll_once()  # stable: handed over
        with p.in_background(p.manager.run_once):
            assert p.clock.wait_for_waiters(1, timeout=30)  # failed, waiting to retry
            assert p.attempts == [(1, True), (2, False)]
            assert p.manager.available_versions("m") == [1]
            (v2 / "variables").mkdir()
            (v2 / "variables" / "variables.index").write_bytes(b"index")
            p.source.poll_once()  # changed: not stable yet
            p.source.poll_once()  # stable: the new fingerprint ends the wait
        p.settle()
        assert p.manager.available_versions("m") == [2]
        assert p.attempts == [(1, True), (2, False), (2, True)]
        assert p.clock.monotonic() == 0.0
