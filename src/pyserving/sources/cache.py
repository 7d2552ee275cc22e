"""The local cache of model versions from object stores, and the Loader that fills it.

:class:`ModelCache` keeps each downloaded version in
``<cache dir>/<model name>/<version>-<fingerprint>/``. Contract:

* **Downloaded once.** A version (with given content, i.e. fingerprint) is copied at most
  once while it stays cached; a copy found there from an earlier run of the server with the
  listed sizes is used as is.
* **Never half.** A copy is written into a ``.partial-*`` directory beside its final place,
  every file's size is checked against the listing, and only then is it renamed into place
  (one atomic rename). A copy that fails midway is retried (``attempts`` times, waiting
  ``backoff`` x 2^n seconds between), resuming with the files already complete; if it still
  fails the load fails with ``UNAVAILABLE`` and the manager's load retries
  (``--max_num_load_retries``) try again later. Nothing partial is ever loaded.
* **Deleted when unneeded.** After each poll the source tells the cache which versions are
  aspired; a cached version that is neither aspired nor in use by a loader (loading, or
  loaded and not yet unloaded) is deleted, as is a version released by its loader while no
  longer aspired, and anything left by an earlier run that is not aspired. A model whose
  store could not be listed keeps its copies until it can be. Only what the cache made is
  ever deleted: model directories holding its marker file, and in them the
  ``<version>-<fingerprint>`` copies and ``.partial-*`` directories, so a cache directory
  shared with other files (``~/.cache``, a directory of local models) loses nothing else.
* **Copied again after a failed load, once.** The first time a copy fails to load it is
  deleted once no loader uses it, so the next attempt downloads it afresh (a copy damaged on
  disk would otherwise fail every retry: cached copies are checked against the listing by
  size only); later failures keep it (a version broken in the store is not downloaded again
  on every retry).
* **One server per directory.** The directory is locked (``flock`` on ``.lock``) by the
  server using it; an explicit directory in use by another live process is refused. The
  default (``<temp dir>/pyserving-model-cache``) falls back to a directory of this process's
  own (removed when it closes) when another server holds it.

:class:`CachedVersionLoader` estimates a version's memory from its listing (before
anything is downloaded, so a version over the memory budget is never downloaded; the server
asks the version's platform, whose loader it builds on a :func:`sparse_mirror` of the
listing), then on ``load`` downloads it into the cache and hands the local copy to the
ordinary path->Loader factory (the platform's loader, with batching and warmup) and loads
that.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.errors import FailedPrecondition, ResourceExhausted, Unavailable
from pyserving.sources.remote import (
    LOCAL_WRITE_ERRORS,
    RemoteVersion,
    StoreError,
    StoreEventCallback,
    redact,
)

log = logging.getLogger(__name__)

#: The cache directory when none is given: ``<temp dir>/pyserving-model-cache``.
DEFAULT_CACHE_NAME = "pyserving-model-cache"

_PARTIAL = ".partial-"
_LOCK = ".lock"
#: In each model directory the cache made: only those directories are cleaned up.
_MARKER = ".pyserving-model-cache"
#: The cache's own entries in a model directory: ``<version>-<listing fingerprint>``.
_ENTRY = re.compile(r"[0-9]+-[0-9a-f]{24}")


def _quote_name(name: str) -> str:
    quoted = urllib.parse.quote(name, safe="")
    return "%2E" + quoted[1:] if quoted.startswith(".") else quoted


class ModelCache:
    """Local copies of remote model versions under one directory. Thread-safe.

    ``directory``: "" for the default; ``subdir``: a directory inside it to use instead
    (the default's fallback is then that directory with the process id appended). Nothing
    is created or locked until :meth:`open` (called by the server when the first remote
    model is configured, and by :meth:`fetch`).
    """

    def __init__(self, directory: str = "", subdir: str = "") -> None:
        self._requested = directory
        self._subdir = subdir
        self._directory: str | None = None
        self._private = False
        self._lock_file: Any = None
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._in_use: dict[tuple[str, str], int] = {}
        self._partials: set[str] = set()
        #: copies under way: (model name, version) -> (partial directory, bytes listed)
        self._copying: dict[tuple[str, int], tuple[str, int]] = {}
        #: per model name, the entry names aspired at the last poll that listed it
        self._aspired: dict[str, set[str]] = {}
        self._configured: set[str] | None = None

    # ------------------------------------------------------------------ directory

    @property
    def directory(self) -> str:
        """The directory in use (opens the cache)."""
        return self.open()

    def open(self) -> str:
        """Create and lock the cache directory (once); return it. ``FailedPrecondition``
        when an explicitly given directory is locked by another process or unusable."""
        with self._lock:
            if self._directory is not None:
                return self._directory
            if self._requested:
                path = os.path.abspath(os.path.join(self._requested, self._subdir))
                if not self._try_lock(path):
                    raise FailedPrecondition(
                        f"--model_cache_dir={path} is in use by another pyserving process; "
                        "give each server its own cache directory"
                    )
            else:
                path = os.path.join(tempfile.gettempdir(), DEFAULT_CACHE_NAME, self._subdir)
                path = path.rstrip(os.sep)
                if not self._try_lock(path):
                    path = f"{path}-{os.getpid()}"
                    self._private = True
                    if not self._try_lock(path):
                        raise FailedPrecondition(f"cannot lock the model cache directory {path}")
                    log.info("Model cache directory in use by another server; using %s", path)
            self._directory = path
            _mark_earlier_copies(path)
            log.info("Model cache directory: %s", path)
            return path

    def _try_lock(self, path: str) -> bool:
        try:
            os.makedirs(path, exist_ok=True)
            handle = open(os.path.join(path, _LOCK), "a+")  # noqa: SIM115 - held until close
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot use the model cache directory {path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    def close(self) -> None:
        """Release the directory (and delete it when it was this process's own)."""
        with self._lock:
            if self._lock_file is not None:
                if self._private and self._directory is not None:
                    shutil.rmtree(self._directory, ignore_errors=True)
                self._lock_file.close()
                self._lock_file = None

    # ------------------------------------------------------------------ entries

    @staticmethod
    def _key(version: RemoteVersion) -> tuple[str, str]:
        return version.name, f"{version.version}-{version.fingerprint}"

    def path_for(self, version: RemoteVersion) -> str:
        """Where ``version``'s copy lives (whether or not it is there yet)."""
        name, entry = self._key(version)
        return os.path.join(self.directory, _quote_name(name), entry)

    def acquire(self, version: RemoteVersion) -> None:
        """Mark ``version``'s copy in use (it is not deleted until :meth:`release`)."""
        with self._lock:
            key = self._key(version)
            self._in_use[key] = self._in_use.get(key, 0) + 1

    def release(self, version: RemoteVersion, *, discard: bool = False) -> None:
        """Undo one :meth:`acquire`; deletes the copy when no longer aspired nor in use, or,
        with ``discard`` (its load failed: the copy may be what is wrong, e.g. damaged on
        disk since it was checked), when no longer in use, so the next load copies it
        again."""
        with self._lock:
            key = self._key(version)
            count = self._in_use.get(key, 0) - 1
            if count > 0:
                self._in_use[key] = count
            else:
                self._in_use.pop(key, None)
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        if discard and count <= 0:
            with key_lock:
                path = self.path_for(version)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                    log.info(
                        "Removed cached model copy %s (its load failed; the next attempt "
                        "copies it again)",
                        path,
                    )
        self.collect()

    def fetch(
        self,
        version: RemoteVersion,
        *,
        attempts: int = 3,
        backoff: float = 1.0,
        on_store_event: StoreEventCallback | None = None,
    ) -> str:
        """The local copy of ``version``, downloading it first unless already cached.

        Raises ``Unavailable`` when every attempt failed (the partial copy is removed)."""
        final = self.path_for(version)
        with self._lock:
            key_lock = self._key_locks.setdefault(self._key(version), threading.Lock())
        try:
            with key_lock:
                return self._fetch_locked(version, final, attempts, backoff, on_store_event)
        except OSError as exc:  # writing the copy (a store's failure is StoreError)
            if exc.errno not in LOCAL_WRITE_ERRORS:
                raise
            raise ResourceExhausted(
                f"Could not copy servable {{name: {version.name} version: "
                f"{version.version}}} into the model cache directory {self.directory}: "
                f"{exc.strerror or exc}"
            ) from None

    def _fetch_locked(
        self,
        version: RemoteVersion,
        final: str,
        attempts: int,
        backoff: float,
        on_store_event: StoreEventCallback | None,
    ) -> str:
        """:meth:`fetch` under the version's lock."""
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        _mark(parent)  # the directory is the cache's (see collect)
        if os.path.isdir(final):
            if _matches(final, version):
                return final
            log.warning("Cached copy %s does not match its listing; copying it again", final)
            shutil.rmtree(final, ignore_errors=True)
        partial = tempfile.mkdtemp(prefix=f"{_PARTIAL}{version.version}-", dir=parent)
        _mark(parent)  # again: a clean-up may have found the directory empty meanwhile
        progress_key = (version.name, version.version)
        with self._lock:
            self._partials.add(partial)
            self._copying[progress_key] = (partial, version.total_bytes)
        try:
            self._download(version, partial, max(1, attempts), backoff, on_store_event)
            os.rename(partial, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            with self._lock:
                self._partials.discard(partial)
                self._copying.pop(progress_key, None)
        log.info(
            "Servable {name: %s version: %d}: copied %d files (%d bytes) from %s to %s",
            version.name,
            version.version,
            len(version.files),
            version.total_bytes,
            version,
            final,
        )
        return final

    def progress(self, name: str, version: int) -> tuple[int, int] | None:
        """``(bytes copied so far, bytes listed)`` of a copy of ``name``'s ``version`` under
        way, None when none is (read from the partial copy's files: one directory walk)."""
        with self._lock:
            copying = self._copying.get((name, version))
        if copying is None:
            return None
        partial, total = copying
        done = 0
        for directory, _dirs, files in os.walk(partial):
            for file in files:
                with contextlib.suppress(OSError):
                    done += os.path.getsize(os.path.join(directory, file))
        return min(done, total), total

    def _download(
        self,
        version: RemoteVersion,
        partial: str,
        attempts: int,
        backoff: float,
        on_store_event: StoreEventCallback | None,
    ) -> None:
        for attempt in range(1, attempts + 1):
            try:
                copied = version.store.download(version.url, version.files, partial)
            except StoreError as exc:
                _notify(on_store_event, version.name, False, 0)
                message = redact(str(exc))
                if attempt == attempts:
                    raise Unavailable(
                        f"Could not copy servable {{name: {version.name} version: "
                        f"{version.version}}} from {version} ({attempts} attempts): {message}"
                    ) from None
                log.warning(
                    "Copying servable {name: %s version: %d} from %s failed (attempt %d of "
                    "%d), retrying: %s",
                    version.name,
                    version.version,
                    version,
                    attempt,
                    attempts,
                    message,
                )
                time.sleep(backoff * 2 ** (attempt - 1))
            else:
                _notify(on_store_event, version.name, True, copied)
                return

    # ------------------------------------------------------------------ clean-up

    def update_aspired(
        self, aspired: Mapping[str, set[tuple[int, str]]], configured: set[str]
    ) -> None:
        """After a poll: per model listed in it, the ``(version, fingerprint)`` pairs aspired;
        and every configured model name. Then deletes what is no longer needed."""
        with self._lock:
            for name, keys in aspired.items():
                self._aspired[name] = {f"{v}-{fp}" for v, fp in keys}
            for name in set(self._aspired) - configured:
                del self._aspired[name]
            self._configured = set(configured)
        self.collect()

    def collect(self) -> None:
        """Delete cached copies neither aspired nor in use, and stale partial copies.

        Copies of a configured model not listed successfully yet are kept; nothing is
        deleted before the first :meth:`update_aspired`."""
        with self._lock:
            if self._directory is None or self._configured is None:
                return
            directory = self._directory
            known = self._configured | set(self._aspired) | {n for n, _ in self._in_use}
            names = {_quote_name(n): n for n in known}
            doomed: list[str] = []
            try:
                model_dirs = os.listdir(directory)
            except OSError:
                return
            for quoted in model_dirs:
                model_dir = os.path.join(directory, quoted)
                if quoted == _LOCK or not os.path.isdir(model_dir):
                    continue
                if not os.path.exists(os.path.join(model_dir, _MARKER)):
                    continue  # not made by the cache: never touched
                name = names.get(quoted)
                if name is not None and name in self._configured and name not in self._aspired:
                    continue  # not listed yet: unknown
                try:
                    entries = os.listdir(model_dir)
                except OSError:
                    continue
                for entry in entries:
                    path = os.path.join(model_dir, entry)
                    if entry.startswith(_PARTIAL):
                        if path not in self._partials:
                            doomed.append(path)
                        continue
                    if not _ENTRY.fullmatch(entry):
                        continue  # not a copy the cache made
                    if name is not None and (
                        entry in self._aspired.get(name, ()) or (name, entry) in self._in_use
                    ):
                        continue
                    doomed.append(path)
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            log.info("Removed cached model copy %s (no longer aspired)", path)
        for path in {os.path.dirname(p) for p in doomed}:
            with contextlib.suppress(OSError):
                if os.listdir(path) == [_MARKER]:
                    os.remove(os.path.join(path, _MARKER))
                    try:
                        os.rmdir(path)
                    except OSError:  # a copy started meanwhile: the directory stays the cache's
                        _mark(path)


def _mark(model_dir: str) -> None:
    """Mark ``model_dir`` as made by the cache (its marker file; ``OSError`` if it cannot)."""
    with open(os.path.join(model_dir, _MARKER), "a"):
        pass


def _mark_earlier_copies(directory: str) -> None:
    """Mark model directories that hold only copies as the cache makes them (by a version
    of pyserving from before the marker), so that they are cleaned up like the others."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            model_dir = os.path.join(directory, name)
            if name == _LOCK or not os.path.isdir(model_dir):
                continue
            try:
                entries = os.listdir(model_dir)
            except OSError:
                continue
            if entries and _MARKER not in entries and all(
                _ENTRY.fullmatch(e) or e.startswith(_PARTIAL) for e in entries
            ):
                with contextlib.suppress(OSError):
                    _mark(model_dir)


@contextlib.contextmanager
def sparse_mirror(files: Sequence[tuple[str, int]]) -> Iterator[str]:
    """A temporary directory holding ``files`` (relative names, sizes) at their sizes but with
    no data (sparse: no disk blocks), removed on exit: what a loader sees of a version's
    names and sizes, for estimates made before the version is downloaded."""
    with tempfile.TemporaryDirectory(prefix="pyserving-listing-") as directory:
        for name, size in files:
            path = os.path.join(directory, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(size)
        yield directory


def _matches(path: str, version: RemoteVersion) -> bool:
    for name, size in version.files:
        try:
            if os.stat(os.path.join(path, *name.split("/"))).st_size != size:
                return False
        except OSError:
            return False
    return True


def _notify(callback: StoreEventCallback | None, name: str, ok: bool, nbytes: int) -> None:
    if callback is not None:
        try:
            callback(name, "download", ok, nbytes)
        except Exception:
            log.exception("store event callback failed")


class CachedVersionLoader(Loader):
    """Loads a :class:`RemoteVersion` from its local copy.

    ``estimate``: the version's resource estimate from its listing (before downloading), or
    a function computing it (called once, when first needed); after ``load``, the lower of
    it and the inner loader's. ``factory(local_path)`` builds
    the Loader of the local copy (it is called only after the copy is complete). Download
    retries: ``attempts`` and ``backoff`` as :meth:`ModelCache.fetch`.
    """

    def __init__(
        self,
        version: RemoteVersion,
        cache: ModelCache,
        factory: Callable[[str], Loader],
        estimate: ResourceEstimate | Callable[[], ResourceEstimate],
        *,
        attempts: int = 3,
        backoff: float = 1.0,
        on_store_event: StoreEventCallback | None = None,
    ) -> None:
        self.version = version
        self._cache = cache
        self._factory = factory
        self._estimate_source = estimate
        self._estimate: ResourceEstimate | None = None
        self._attempts = attempts
        self._backoff = backoff
        self._on_store_event = on_store_event
        self._inner: Loader | None = None
        self._discarded = False
        self.local_path: str | None = None

    def estimate_resources(self) -> ResourceEstimate:
        if self._estimate is None:
            source = self._estimate_source
            self._estimate = source if isinstance(source, ResourceEstimate) else source()
        if self._inner is None:
            return self._estimate
        inner = self._inner.estimate_resources()
        return ResourceEstimate(
            min(inner.ram_bytes, self._estimate.ram_bytes),
            min(inner.accelerator_bytes, self._estimate.accelerator_bytes),
        )

    def load(self) -> None:
        self._cache.acquire(self.version)
        path: str | None = None
        try:
            path = self._cache.fetch(
                self.version,
                attempts=self._attempts,
                backoff=self._backoff,
                on_store_event=self._on_store_event,
            )
            inner = self._factory(path)
            inner.load()
        except BaseException:
            # A copy that fails to load is not kept, once: damaged on disk since it was
            # copied (its files are checked by size only), it would fail every retry. Once
            # only: a version that is itself broken is not copied again on every retry.
            discard = path is not None and not self._discarded
            self._discarded = self._discarded or discard
            self._cache.release(self.version, discard=discard)
            raise
        self.local_path = path
        self._inner = inner

    def unload(self) -> None:
        inner, self._inner = self._inner, None
        if inner is None:
            return
        try:
            inner.unload()
        finally:
            self._cache.release(self.version)

    def servable(self) -> Any:
        if self._inner is None:
            raise FailedPrecondition(f"{self.version} is not loaded")
        return self._inner.servable()
