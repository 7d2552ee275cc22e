"""A file-system storage path source: polls model base paths for version directories.

Rules (TF Serving's ``FileSystemStoragePathSource``):

* A version is a child *directory* of the base path whose whole name is decimal digits that
  fit an int64 (``00000123`` is version 123). Other children are ignored; when none qualify one
  line ``No versions of servable NAME found under base path BASE`` is logged (once, until that
  changes).
* The version policy picks the aspired versions among those found: ``latest`` (the
  ``num_versions`` highest, default 1), ``all``, or ``specific`` (those listed that exist).
* Each poll emits, per servable, the complete aspired list of ``(ServableId, version path)``;
  a version that vanished is therefore un-aspired. A servable dropped from the configuration is
  emitted once with an empty list, which unloads it.
* A missing or unreadable base path is logged and changes nothing: nothing is emitted for that
  servable, so loaded versions keep serving.
* ``poll_wait_seconds`` > 0 polls that often in a background thread; 0 polls once at
  ``start()``; < 0 never polls on its own (only explicit ``poll_once()`` calls).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pyserving.core.source import AspiredVersionsCallback, ServableData, ServableId, Source

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^[0-9]+$")
_INT64_MAX = 2**63 - 1


class VersionPolicyKind(enum.Enum):
    LATEST = "latest"
    ALL = "all"
    SPECIFIC = "specific"


@dataclass(frozen=True)
class ServableVersionPolicy:
    """Which of the versions found are aspired."""

    kind: VersionPolicyKind = VersionPolicyKind.LATEST
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def latest(cls, num_versions: int = 1) -> ServableVersionPolicy:
        return cls(VersionPolicyKind.LATEST, num_versions=max(1, num_versions))

    @classmethod
    def all(cls) -> ServableVersionPolicy:
        return cls(VersionPolicyKind.ALL)

    @classmethod
    def specific(cls, versions: Iterable[int]) -> ServableVersionPolicy:
        return cls(VersionPolicyKind.SPECIFIC, versions=frozenset(versions))

    def select(self, found: Iterable[int]) -> list[int]:
        """The aspired subset of ``found``, ascending."""
        versions = sorted(set(found))
        if self.kind is VersionPolicyKind.ALL:
            return versions
        if self.kind is VersionPolicyKind.SPECIFIC:
            return [v for v in versions if v in self.versions]
        return versions[-self.num_versions :] if versions else []


@dataclass(frozen=True)
class ServableSourceConfig:
    """One servable stream to watch: its name, base path and version policy."""

    name: str
    base_path: str
    version_policy: ServableVersionPolicy = field(default_factory=ServableVersionPolicy)


def parse_version(name: str) -> int | None:
    """The version a directory name denotes, or ``None`` when it is not a version."""
    if not _VERSION_RE.match(name):
        return None
    value = int(name)
    return value if value <= _INT64_MAX else None


def list_versions(base_path: str) -> dict[int, str]:
    """``{version: path}`` of the version directories under ``base_path``.

    Raises ``OSError`` when ``base_path`` cannot be listed. When two names denote the same
    version (``1`` and ``001``) the lexicographically first wins, deterministically.
    """
    found: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            version = parse_version(entry.name)
            if version is None or version in found:
                continue
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            found[version] = entry.path
    return found


class FileSystemStoragePathSource(Source[str]):
    """Emits version paths of the configured servables. Thread-safe; a context manager."""

    def __init__(
        self, servables: Sequence[ServableSourceConfig] = (), poll_wait_seconds: float = 1.0
    ) -> None:
        self._servables: dict[str, ServableSourceConfig] = {s.name: s for s in servables}
        self._removed: set[str] = set()
        self._poll_wait = poll_wait_seconds
        self._callback: AspiredVersionsCallback | None = None
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: dict[str, str] = {}

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback) -> None:
        self._callback = callback

    def update_config(self, servables: Sequence[ServableSourceConfig]) -> None:
        """Replace the watched set; servables no longer listed are emitted empty at next poll."""
        with self._lock:
            new = {s.name: s for s in servables}
            self._removed |= set(self._servables) - set(new)
            self._removed -= set(new)
            self._servables = new

    def start(self) -> None:
        """Poll once now (unless ``poll_wait_seconds`` < 0), then periodically if > 0."""
        if self._poll_wait >= 0:
            self.poll_once()
        if self._poll_wait > 0:
            self._thread = threading.Thread(
                target=self._loop, name="pyserving-fs-source", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_wait):
            try:
                self.poll_once()
            except Exception:
                log.exception("file system poll failed")

    def poll_once(self) -> None:
        """Scan every base path and emit the aspired versions of each servable."""
        if self._callback is None:
            raise RuntimeError("set_aspired_versions_callback() must be called before polling")
        with self._poll_lock:
            with self._lock:
                servables = list(self._servables.values())
                removed, self._removed = self._removed, set()
            for name in sorted(removed):
                self._callback(name, [])
            for servable in servables:
                versions = self._scan(servable)
                if versions is not None:
                    self._callback(servable.name, versions)

    def _scan(self, servable: ServableSourceConfig) -> list[ServableData[str]] | None:
        try:
            found = list_versions(servable.base_path)
        except OSError as exc:
            self._warn_once(
                servable.name,
                f"Could not read base path {servable.base_path} for servable "
                f"{servable.name}: {exc.strerror or exc}",
            )
            return None
        if not found:
            self._warn_once(
                servable.name,
                f"No versions of servable {servable.name} found under base path "
                f"{servable.base_path}",
            )
        else:
            self._warned.pop(servable.name, None)
        aspired = servable.version_policy.select(found)
        if servable.version_policy.kind is VersionPolicyKind.SPECIFIC:
            missing = sorted(servable.version_policy.versions - set(found))
            if missing:
                self._warn_once(
                    servable.name + "/specific",
                    f"Servable {servable.name}: requested versions {missing} not found under "
                    f"{servable.base_path}",
                )
        return [ServableData(ServableId(servable.name, v), found[v]) for v in aspired]

    def _warn_once(self, key: str, message: str) -> None:
        if self._warned.get(key) != message:
            self._warned[key] = message
            log.warning(message)

    def close(self) -> None:
        """Stop polling (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> FileSystemStoragePathSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
