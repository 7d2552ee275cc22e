"""A file-system storage path source: polls model base paths for version directories.

The rules below live in :class:`StoragePathSource`, which knows a model repository only
through its listings; :class:`FileSystemStoragePathSource` lists local directories, and
``sources/remote.py`` lists object stores (S3, GCS, Azure Blob) with the same rules.

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

Half-written versions (pyserving's rule; TF Serving has none). A version directory that is
still being copied must not be loaded. With ``require_stable`` (the default whenever the source
polls periodically, ``poll_wait_seconds`` > 0) a version becomes a candidate for the version
policy only once

* it is *complete*: one of its servable's ``complete_markers`` (for a SavedModel
  ``saved_model.pb`` or ``saved_model.pbtxt``) is present at its top level, and
* it is *stable*: its recursive listing (relative names, sizes, modification times) is the
  same at two consecutive polls. The first poll that sees a new version only records it.

A version without a marker is never handed over to be loaded, however long it waits (a copy
that wrote ``variables/`` first and stalls before ``saved_model.pb`` is still a copy). Once its
listing has been unchanged for ``INCOMPLETE_SETTLE_POLLS`` consecutive polls after the first
sighting it is *reported*: emitted as error data (``NotFound``, naming the missing files) with
the fingerprint of that listing, so that a directory that is not a SavedModel shows in model
status as an error (TF Serving reports one too) while no load is attempted. A reported version
is emitted only where the version policy would pick it among accepted and reported versions,
and never displaces an accepted one: with ``latest``, the previous complete version stays
aspired and keeps serving beside it. Once the missing file arrives and the listing is unchanged
for one poll, the version is accepted: handed over at the second poll after its last file
arrived.

Exceptions, each deliberate:

* The first poll of a servable (server start-up, or a model newly added to the
  configuration) accepts complete versions at once: the repository is taken to be in place
  when the server is pointed at it, and start-up is not delayed by a poll interval. (If that
  poll cannot read the base path, versions that show up later get no such exception.)
* Without ``require_stable`` (``poll_wait_seconds`` <= 0: a single poll at start-up and
  explicit polls, e.g. on a config reload) versions are taken as found, as TF Serving does:
  there is no later poll to confirm them.

What the source cannot tell: a copy that writes the marker first and then stalls for a whole
poll interval looks complete and stable, and is handed over early; if its load fails, it is
loaded afresh as soon as its content settles again (next paragraph).

The policy chooses among accepted versions only: while a new latest version is being copied,
the previous one stays aspired and keeps serving.

Content changes. Every emitted version carries a ``fingerprint`` (a digest of the listing it
was accepted or reported with). When an emitted version's content changes and settles again
complete (a marker present, the listing unchanged across two polls; at once without
``require_stable``) the new fingerprint is emitted; until then the version is emitted as
before, with its old fingerprint. New content without a marker is never handed over: an
accepted version whose marker disappears keeps the fingerprint it was accepted with until the
marker is back. The manager loads a version again, at once, when its fingerprint changes while
it is in error, waiting between load retries, or not yet loading; so a corrupt or half-copied
version that is fixed in place (same version number) loads on a later poll. A version that
loaded successfully is never reloaded (versions are immutable once served, as in TF Serving:
publish a new version number instead).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pyserving.core.source import AspiredVersionsCallback, ServableData, ServableId, Source
from pyserving.errors import NotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

_VERSION_RE = re.compile(r"^[0-9]+$")
_INT64_MAX = 2**63 - 1

#: The files that mark a SavedModel version directory as complete.
SAVED_MODEL_MARKERS: tuple[str, ...] = ("saved_model.pb", "saved_model.pbtxt")

#: Consecutive polls (after the first sighting) an incomplete version's listing must stay
#: unchanged before it is reported as an error (it is never loaded while incomplete). A
#: complete version needs one to be accepted.
INCOMPLETE_SETTLE_POLLS = 2

#: One entry of a version directory's listing: (relative path, size, mtime in ns). Directories
#: end in "/" and have size -1; an entry that could not be read has size -2.
ListingEntry = tuple[str, int, int]


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

    @classmethod
    def from_config(cls, policy: Any) -> ServableVersionPolicy:
        """The policy of a ``ModelConfig.model_version_policy`` message (TF Serving's
        ``FileSystemStoragePathSourceConfig.ServableVersionPolicy``): ``latest`` with its
        ``num_versions`` (0 means 1), ``all``, ``specific``; unset is ``latest``."""
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return cls.all()
        if choice == "specific":
            return cls.specific(policy.specific.versions)
        if choice == "latest":
            return cls.latest(policy.latest.num_versions or 1)
        return cls.latest()

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
    """One servable stream to watch: its name, base path and version policy.

    ``complete_markers``: file names, one of which must be present at the top of a version
    directory for it to count as complete (empty: every directory is complete). Only
    consulted when the source requires stable versions (see the module docstring).
    """

    name: str
    base_path: str
    version_policy: ServableVersionPolicy = field(default_factory=ServableVersionPolicy)
    complete_markers: tuple[str, ...] = ()


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


def version_listing(path: str) -> tuple[ListingEntry, ...]:
    """The sorted recursive listing of a version directory: ``(relative path, size, mtime_ns)``.

    Directories are listed (name ending in ``/``, size -1) and descended into, except symbolic
    links to directories (listed, not followed, so a link cycle cannot loop). Files are
    stat-ed through symbolic links. An entry or directory that cannot be read is listed with
    size -2 and the error number, so a listing taken while files come and go differs from the
    next one. Never raises.
    """
    entries: list[ListingEntry] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(os.path.join(path, rel) if rel else path) as it:
                children = list(it)
        except OSError as exc:
            entries.append((rel + "/", -2, exc.errno or 0))
            continue
        for entry in children:
            name = os.path.join(rel, entry.name) if rel else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    entries.append((name + "/", -1, 0))
                    pending.append(name)
                    continue
                info = entry.stat()
            except OSError as exc:
                entries.append((name, -2, exc.errno or 0))
                continue
            if stat.S_ISDIR(info.st_mode):  # a symbolic link to a directory
                entries.append((name + "@/", -1, info.st_mtime_ns))
            else:
                entries.append((name, info.st_size, info.st_mtime_ns))
    entries.sort()
    return tuple(entries)


def incomplete_error(servable: ServableSourceConfig, version: int, path: str) -> NotFound:
    """The error an incomplete version is reported with: where a SavedModel would complete
    it, TF Serving's own message for a directory without one; then why pyserving has not
    tried to load it."""
    markers = servable.complete_markers
    if set(SAVED_MODEL_MARKERS) <= set(markers):
        head = f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
    else:
        head = f"Could not find any of {', '.join(markers)} at version directory path: {path}"
    return NotFound(
        f"{head} (servable {servable.name} version {version}: it is loaded once one of "
        f"{'/'.join(markers)} is present and its files are unchanged between two polls)"
    )


def listing_fingerprint(listing: Sequence[ListingEntry]) -> str:
    """A short digest of a listing (changes whenever a name, size or mtime changes)."""
    return hashlib.blake2b(repr(tuple(listing)).encode(), digest_size=12).hexdigest()


class _Outcome(enum.Enum):
    """What one poll makes of one version directory."""

    WAITING = "waiting"  # not emitted
    ACCEPTED = "accepted"  # emitted as its path, with ``_Candidate.accepted``
    INCOMPLETE = "incomplete"  # emitted as an error, with ``_Candidate.reported``


@dataclass
class _Candidate:
    """What the source knows of one version directory between polls."""

    listing: tuple[ListingEntry, ...] | None = None
    #: consecutive polls at which the listing was the same as at the poll before
    unchanged: int = 0
    #: the fingerprint emitted with this version's path; None while it is not accepted yet
    accepted: str | None = None
    #: the listing ``accepted`` was computed from
    accepted_listing: tuple[ListingEntry, ...] = ()
    #: the fingerprint of the incomplete listing last reported as an error (None: none)
    reported: str | None = None
    waiting_logged: bool = False


class StoragePathSource(Source[T], Generic[T]):
    """The module docstring's rules over any model repository that can be listed.

    Subclasses say how a base path is listed and what is emitted for a version:

    * :meth:`_list_versions` (``{version: path}``; raises ``OSError`` when the base path
      cannot be read, which emits nothing for that servable, so loaded versions keep serving),
    * :meth:`_version_listing` (the listing of one version, never raises),
    * :meth:`_value` (the value emitted for an accepted version, given the listing it was
      accepted with).

    Thread-safe; a context manager. ``require_stable``: only accept complete versions whose
    listing is unchanged across two polls (see the module docstring); ``None`` (default)
    means "when ``poll_wait_seconds`` > 0".
    """

    #: The name of the polling thread.
    thread_name = "pyserving-source"

    def __init__(
        self,
        servables: Sequence[ServableSourceConfig] = (),
        poll_wait_seconds: float = 1.0,
        *,
        require_stable: bool | None = None,
    ) -> None:
        self._servables: dict[str, ServableSourceConfig] = {s.name: s for s in servables}
        self._removed: set[str] = set()
        #: servables handed over to another source: forgotten at the next poll, not emitted
        self._forgotten: set[str] = set()
        self._poll_wait = poll_wait_seconds
        self._require_stable = poll_wait_seconds > 0 if require_stable is None else require_stable
        #: per servable name: (base path, candidates by version); absent until its first
        #: successful poll.
        self._candidates: dict[str, tuple[str, dict[int, _Candidate]]] = {}
        self._callback: AspiredVersionsCallback | None = None
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: dict[str, str] = {}

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback) -> None:
        self._callback = callback

    def update_config(
        self, servables: Sequence[ServableSourceConfig], handed_over: Iterable[str] = ()
    ) -> None:
        """Replace the watched set; servables no longer listed are emitted empty at next poll,
        except those ``handed_over`` to another source (which emits their versions from now
        on: an empty list from this one would un-aspire them).

        A servable whose base path changed starts afresh (its next poll is a first poll)."""
        with self._lock:
            new = {s.name: s for s in servables}
            self._removed |= set(self._servables) - set(new) - set(handed_over)
            self._removed -= set(new)
            self._forgotten |= set(handed_over) - set(new)
            self._servables = new

    def start(self) -> None:
        """Poll once now (unless ``poll_wait_seconds`` < 0), then periodically if > 0."""
        if self._poll_wait >= 0:
            self.poll_once()
        if self._poll_wait > 0:
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_wait):
            try:
                self.poll_once()
            except Exception:
                log.exception("model repository poll failed")

    def poll_once(self) -> None:
        """Scan every base path and emit the aspired versions of each servable."""
        if self._callback is None:
            raise RuntimeError("set_aspired_versions_callback() must be called before polling")
        with self._poll_lock:
            with self._lock:
                servables = list(self._servables.values())
                removed, self._removed = self._removed, set()
                forgotten, self._forgotten = self._forgotten, set()
            for name in forgotten - {s.name for s in servables}:
                self._candidates.pop(name, None)
            for name in sorted(removed):
                self._candidates.pop(name, None)
                self._callback(name, [])
            for servable in servables:
                versions = self._scan(servable)
                if versions is not None:
                    self._callback(servable.name, versions)

    # ------------------------------------------------------------------ listing hooks

    def _list_versions(self, servable: ServableSourceConfig) -> dict[int, str]:
        """``{version: path}`` of the version directories under the servable's base path;
        ``OSError`` when it cannot be read."""
        raise NotImplementedError

    def _version_listing(
        self, servable: ServableSourceConfig, version: int, path: str
    ) -> tuple[ListingEntry, ...]:
        """The sorted listing of one version directory found by the last
        :meth:`_list_versions` (see :func:`version_listing`). Never raises."""
        raise NotImplementedError

    def _value(
        self,
        servable: ServableSourceConfig,
        version: int,
        path: str,
        listing: tuple[ListingEntry, ...],
        fingerprint: str,
    ) -> T:
        """What is emitted for an accepted version: ``listing`` is the one it was accepted
        with, ``fingerprint`` its digest."""
        raise NotImplementedError

    def _display(self, path: str) -> str:
        """``path`` as it may appear in logs and errors."""
        return path

    # ------------------------------------------------------------------ the rules

    def _scan(self, servable: ServableSourceConfig) -> list[ServableData[T]] | None:
        known = self._candidates.get(servable.name)
        # The first poll of a servable accepts complete versions at once, even if it fails:
        # a base path that shows up later gets no such exception.
        first = known is None or known[0] != servable.base_path
        if first:
            self._candidates[servable.name] = (servable.base_path, {})
        base = self._display(servable.base_path)
        try:
            found = self._list_versions(servable)
        except OSError as exc:
            self._warn_once(
                servable.name,
                f"Could not read base path {base} for servable "
                f"{servable.name}: {exc.strerror or exc}",
            )
            return None
        if not found:
            self._warn_once(
                servable.name,
                f"No versions of servable {servable.name} found under base path {base}",
            )
        else:
            self._warned.pop(servable.name, None)
        policy = servable.version_policy
        if policy.kind is VersionPolicyKind.SPECIFIC:
            missing = sorted(policy.versions - set(found))
            if missing:
                self._warn_once(
                    servable.name + "/specific",
                    f"Servable {servable.name}: requested versions {missing} not found under "
                    f"{base}",
                )
        candidates = {v: c for v, c in self._candidates[servable.name][1].items() if v in found}
        self._candidates[servable.name] = (servable.base_path, candidates)
        accepted: list[int] = []
        incomplete: list[int] = []
        for version in self._examination_order(policy, found):
            candidate = candidates.setdefault(version, _Candidate())
            outcome = self._examine(servable, version, found[version], candidate, first)
            if outcome is _Outcome.INCOMPLETE:
                incomplete.append(version)
            elif outcome is _Outcome.ACCEPTED:
                accepted.append(version)
                if policy.kind is VersionPolicyKind.LATEST and len(accepted) >= policy.num_versions:
                    break
        # Incomplete versions are reported only where the policy would pick them, and never
        # take an accepted version's place.
        reported = set(policy.select(accepted + incomplete)) & set(incomplete)
        emitted: list[ServableData[T]] = []
        for version in sorted(set(policy.select(accepted)) | reported):
            id = ServableId(servable.name, version)
            candidate = candidates[version]
            if version in reported:
                error = incomplete_error(servable, version, self._display(found[version]))
                emitted.append(ServableData(id, error=error, fingerprint=candidate.reported))
            else:
                assert candidate.accepted is not None
                value = self._value(
                    servable,
                    version,
                    found[version],
                    candidate.accepted_listing,
                    candidate.accepted,
                )
                emitted.append(ServableData(id, value, fingerprint=candidate.accepted))
        return emitted

    @staticmethod
    def _examination_order(policy: ServableVersionPolicy, found: dict[int, str]) -> list[int]:
        """The versions worth listing, newest first (``latest`` stops once it has enough)."""
        versions = sorted(found, reverse=True)
        if policy.kind is VersionPolicyKind.SPECIFIC:
            return [v for v in versions if v in policy.versions]
        return versions

    def _examine(
        self,
        servable: ServableSourceConfig,
        version: int,
        path: str,
        candidate: _Candidate,
        first: bool,
    ) -> _Outcome:
        """Update what is known of one version from its listing now.

        ``ACCEPTED``: emit its path with ``candidate.accepted``; ``INCOMPLETE``: emit it as an
        error with ``candidate.reported``; ``WAITING``: do not emit it. Content without a
        marker is never accepted while ``require_stable``.
        """
        listing = self._version_listing(servable, version, path)
        path = self._display(path)
        if listing == candidate.listing:
            candidate.unchanged += 1
        else:
            candidate.listing = listing
            candidate.unchanged = 0
        fingerprint = listing_fingerprint(listing)
        if candidate.accepted == fingerprint:
            return _Outcome.ACCEPTED
        if not self._require_stable:
            candidate.accepted = fingerprint
            candidate.accepted_listing = listing
            return _Outcome.ACCEPTED
        markers = servable.complete_markers
        complete = not markers or any(
            name in markers for name, size, _ in listing if size >= 0 and "/" not in name
        )
        stable = candidate.unchanged >= 1
        if candidate.accepted is not None:
            # Accepted before, changed since: the new content replaces the old one only once
            # it is complete and stable; until then the version keeps its old fingerprint.
            if complete and stable:
                log.info(
                    "Servable %s version %d: content at %s changed", servable.name, version, path
                )
                candidate.accepted = fingerprint
                candidate.accepted_listing = listing
            return _Outcome.ACCEPTED
        if complete and (stable or first):
            if candidate.reported is not None:
                log.info(
                    "Servable %s version %d at %s is complete now", servable.name, version, path
                )
            candidate.accepted = fingerprint
            candidate.accepted_listing = listing
            candidate.reported = None
            return _Outcome.ACCEPTED
        if not complete and candidate.unchanged >= INCOMPLETE_SETTLE_POLLS:
            if candidate.reported != fingerprint:
                log.warning(
                    "Servable %s version %d at %s has none of %s after %d unchanged polls; "
                    "it is not loaded until one is present",
                    servable.name,
                    version,
                    path,
                    "/".join(markers),
                    candidate.unchanged,
                )
                candidate.reported = fingerprint
            return _Outcome.INCOMPLETE
        if candidate.reported is not None:
            # Reported before and changing now: reported as before until it settles.
            return _Outcome.INCOMPLETE
        if not candidate.waiting_logged:
            candidate.waiting_logged = True
            if complete:
                log.info(
                    "Servable %s version %d found at %s; it is loaded once its files are "
                    "unchanged between two polls",
                    servable.name,
                    version,
                    path,
                )
            else:
                log.info(
                    "Servable %s version %d at %s has no %s yet; waiting until it is "
                    "complete and unchanged between two polls",
                    servable.name,
                    version,
                    path,
                    "/".join(markers),
                )
        return _Outcome.WAITING

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

    def __enter__(self) -> StoragePathSource[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSystemStoragePathSource(StoragePathSource[str]):
    """Emits the local paths of the configured servables' versions (module docstring)."""

    thread_name = "pyserving-fs-source"

    def _list_versions(self, servable: ServableSourceConfig) -> dict[int, str]:
        return list_versions(servable.base_path)

    def _version_listing(
        self, servable: ServableSourceConfig, version: int, path: str
    ) -> tuple[ListingEntry, ...]:
        return version_listing(path)

    def _value(
        self,
        servable: ServableSourceConfig,
        version: int,
        path: str,
        listing: tuple[ListingEntry, ...],
        fingerprint: str,
    ) -> str:
        return path

    def __enter__(self) -> FileSystemStoragePathSource:
        return self
