"""A copy under way reports its progress (the dashboard shows it for a LOADING version)."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Sequence

from pyserving.sources.cache import ModelCache
from tests.sources.test_remote import SpyFileSystem, put, remote_version, store

__all__ = ["store"]  # the fixture, used by name below


class HeldCopy(SpyFileSystem):
    """Copies the first file, then waits for ``release`` before copying the rest."""

    def __init__(self, spy: SpyFileSystem) -> None:
        super().__init__(spy.fs)
        self.first_copied = threading.Event()
        self.release = threading.Event()

    def get(self, remote: Sequence[str], local: Sequence[str]) -> None:
        for index, (rpath, lpath) in enumerate(zip(remote, local, strict=True)):
            if index == 1:
                self.first_copied.set()
                assert self.release.wait(60), "the test never released the copy"
            self.fs.get_file(rpath, lpath)


def test_progress_of_a_copy_under_way(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb", b"p" * 300)
    put(spy, f"{base}/1/variables/variables.data", b"d" * 700)
    held = HeldCopy(spy)
    version = remote_version(base, held)
    cache = ModelCache(str(tmp_path / "cache"))
    assert cache.progress("m", 1) is None
    fetched: list[str] = []
    thread = threading.Thread(target=lambda: fetched.append(cache.fetch(version)))
    thread.start()
    try:
        assert held.first_copied.wait(60)
        assert cache.progress("m", 1) == (300, 1000)
        assert cache.progress("m", 2) is None
    finally:
        held.release.set()
        thread.join(60)
    assert fetched
    assert cache.progress("m", 1) is None
    cache.close()
