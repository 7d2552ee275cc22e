"""Requests for ``latest`` never fail while versions 1 -> 2 -> 3 swap (availability-preserving)."""

from __future__ import annotations

import threading
import time

from pyserving.core.handle import ServableRequest
from pyserving.core.manager import AspiredVersionsManager, ManagerOptions
from pyserving.core.source import ServableData, ServableId
from tests.core.fakes import FakeLoader


def test_latest_lookups_never_fail_during_swaps() -> None:
    with AspiredVersionsManager(
        ManagerOptions(num_load_threads=2, num_unload_threads=2, manage_state_interval=0.001)
    ) as m:
        callback = m.get_aspired_versions_callback()
        callback("m", [ServableData(ServableId("m", 1), FakeLoader("m", 1))])
        m.settle()
        stop = threading.Event()
        failures: list[BaseException] = []
        seen: set[int] = set()
        used_unloaded: list[int] = []
        lookups = [0]

        def client() -> None:
            while not stop.is_set():
                try:
                    with m.handle(ServableRequest.latest("m")) as h:
                        if h.servable.unloaded:
                            used_unloaded.append(h.id.version)
                        seen.add(h.id.version)
                        lookups[0] += 1
                except BaseException as exc:
                    failures.append(exc)
                    return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for version in (2, 3):
            callback("m", [ServableData(ServableId("m", version), FakeLoader("m", version))])
            deadline = threading.Event()
            for _ in range(3000):
                if m.available_versions("m") == [version]:
                    break
                deadline.wait(0.005)
            assert m.available_versions("m") == [version]
        # Until a client has been served by the last version (stopping as soon as it is
        # available could end the clients before any of them looked it up).
        until = time.monotonic() + 30
        while 3 not in seen and not failures and time.monotonic() < until:
            threading.Event().wait(0.005)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert used_unloaded == []
        assert seen >= {3}
        assert lookups[0] > 0
