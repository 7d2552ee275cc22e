"""Model repositories in object stores: S3, GCS and Azure Blob, through fsspec.

A base path such as ``s3://bucket/models/flowers`` holds version "directories" (key prefixes)
as a local base path does. :class:`RemoteStoragePathSource` applies the file-system source's
rules unchanged (``sources/filesystem.py``: version names, version policies, a version is
handed over only once complete and unchanged between two polls, fingerprints, content
changes), with these differences:

* **One listing per servable per poll.** Each poll lists every object under the base path in
  one recursive listing (S3 ``ListObjectsV2`` without a delimiter, its GCS and Azure
  equivalents; paginated by the store), never one request per version or per file. A
  version's listing is its objects' relative names, sizes and entity tags (the tag stands
  where a local listing has the modification time). Zero-byte "directory" placeholders
  (keys ending in ``/``) only show that a prefix exists.
* **What is emitted** for an accepted version is a :class:`RemoteVersion`: its URL, the
  files and sizes it was accepted with and their fingerprint. Nothing is downloaded by the
  source: the loader built from it (``sources/cache.py``) estimates its memory from the
  listed sizes, then downloads it into the local cache and loads the local copy.
* **An unreachable store** (or a listing that fails for any reason: credentials, network,
  a missing bucket) emits nothing for that servable, exactly as an unreadable local base
  path: the versions loaded keep serving and nothing is un-aspired. The failure is logged
  (once until it changes, and again when the store answers) and reported to
  ``on_store_event`` (the server turns it into metrics).
* **Names**: an object whose relative name has an empty, ``.`` or ``..`` component cannot
  be copied safely and is left out (logged once).

Credentials are each store's own, from the environment (see :func:`storage_options`);
:func:`redact` removes their values, and URL query strings and user information, from
every message this module and the cache log or put in a model's status.

fsspec and the store's package (``s3fs``, ``gcsfs``, ``adlfs``) are imported only when a
remote base path is configured; :func:`check_base_path` names the extra to install when
one is missing.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import importlib
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyserving.config import ConfigError
from pyserving.core.source import ServableData
from pyserving.sources.filesystem import (
    ListingEntry,
    ServableSourceConfig,
    StoragePathSource,
    parse_version,
)

log = logging.getLogger(__name__)

#: Remote schemes, with the package that reads them and the extra that installs it.
#: ``memory`` is fsspec's in-process store (for tests).
REMOTE_SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
    "memory": ("fsspec", "s3"),
}

#: ``on_store_event(servable_name, operation, ok, nbytes)``: one listing (``"list"``) or one
#: download attempt (``"download"``, with the bytes copied) finished.
StoreEventCallback = Callable[[str, str, bool, int], None]

#: Environment variables whose values are secrets: never shown.
SECRET_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
)

_SECRET_FIELDS = re.compile(
    r"(?i)\b(AccountKey|SharedAccessSignature|sig|X-Amz-Signature|X-Amz-Credential|"
    r"X-Amz-Security-Token|access_token|client_secret|password)=([^;&\s'\"]+)"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` without secrets: the values of :data:`SECRET_ENVIRONMENT`, ``key=value``
    credential fields (``AccountKey=``, ``sig=``, ``X-Amz-Signature=`` ...) and
    ``user:password@`` in URLs are replaced with ``***``."""
    for name in SECRET_ENVIRONMENT:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    text = _SECRET_FIELDS.sub(lambda m: f"{m.group(1)}=***", text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}***@", text)


def display_url(url: str) -> str:
    """``url`` as shown in logs and statuses: no query string, fragment or password."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme:
        return url
    return redact(urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def scheme_of(path: str) -> str:
    """The lower-case URL scheme of ``path`` ("" for a plain path)."""
    head, sep, _ = path.partition("://")
    return head.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head) else ""


def is_remote(path: str) -> bool:
    """True when ``path`` names an object store this module reads."""
    return scheme_of(path) in REMOTE_SCHEMES


def local_path(path: str) -> str:
    """``path`` with a ``file://`` scheme removed (``file:///models/m`` -> ``/models/m``)."""
    if scheme_of(path) != "file":
        return path
    parts = urllib.parse.urlsplit(path)
    return urllib.parse.unquote(parts.path)


def check_base_path(name: str, path: str) -> None:
    """``ConfigError`` when model ``name``'s base path has a scheme pyserving cannot read,
    or whose package is not installed (naming the extra that installs it)."""
    scheme = scheme_of(path)
    if not scheme or scheme == "file":
        return
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(
            f"Model {name} has base_path {display_url(path)}: the {scheme}:// scheme is not "
            "supported (supported: s3://, gs://, az://, abfs://, file://)"
        )
    package, extra = REMOTE_SCHEMES[scheme]
    for module in ("fsspec", package):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"Model {name} has base_path {display_url(path)}, which needs the Python "
                f"package {module} ({exc}): pip install 'pyserving[{extra}]'"
            ) from None


def storage_options(scheme: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """fsspec options for ``scheme`` beside what each store's package reads itself.

    * S3 (``s3fs``/botocore): credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
      (``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` and the shared files, instance and pod roles
      (IRSA); the region from ``AWS_REGION``/``AWS_DEFAULT_REGION``; the endpoint from
      ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (S3-compatible stores such as MinIO),
      all read by botocore. TF Serving's ``S3_ENDPOINT`` (``host:port``, HTTPS unless
      ``S3_USE_HTTPS=0``) and ``S3_VERIFY_SSL=0`` are honoured when botocore's own are unset.
    * GCS (``gcsfs``): application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
      workload identity, the metadata server); ``STORAGE_EMULATOR_HOST`` for an emulator,
      anonymous there unless credentials are set.
    * Azure (``adlfs``): ``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME``
      with ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_TOKEN`` or a service principal
      (``AZURE_STORAGE_CLIENT_ID``/``_SECRET``/``TENANT_ID``), else the default Azure
      credential chain (managed identity, workload identity), all read by adlfs. With an
      account name, the blob endpoint is ``https://<account>.blob.core.windows.net`` unless
      ``AZURE_STORAGE_ACCOUNT_HOST`` (pyserving's; no Azure SDK reads an endpoint variable)
      names another host, passed as adlfs's ``account_host`` option: ``host[:port][/path]``,
      HTTPS only (adlfs builds ``https://<account_host>``; an ``https://`` prefix is
      accepted, ``http://`` is a ``ValueError`` pointing to the connection string's
      ``BlobEndpoint=``). A connection string, when set, wins over it (adlfs's rule).

    Listings are never cached between polls (``use_listings_cache=False``).
    """
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {"use_listings_cache": False}
    family = REMOTE_SCHEMES.get(scheme, ("", ""))[1]
    if family == "s3" and scheme != "memory":
        options["config_kwargs"] = {
            "connect_timeout": 10,
            "read_timeout": 60,
            "retries": {"max_attempts": 3, "mode": "standard"},
        }
        has_endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if not has_endpoint and env.get("S3_ENDPOINT"):
            endpoint = env["S3_ENDPOINT"]
            if "://" not in endpoint:
                https = env.get("S3_USE_HTTPS", "1").lower() not in ("0", "false")
                endpoint = f"{'https' if https else 'http'}://{endpoint}"
            options["endpoint_url"] = endpoint
        if env.get("S3_VERIFY_SSL", "1").lower() in ("0", "false"):
            options["client_kwargs"] = {"verify": False}
    elif family == "gcs":
        emulator = env.get("STORAGE_EMULATOR_HOST", "")
        if emulator not in ("", "default") and not env.get("GOOGLE_APPLICATION_CREDENTIALS"):
            options["token"] = "anon"
    elif family == "azure":
        host = env.get("AZURE_STORAGE_ACCOUNT_HOST", "").strip()
        if host:
            options["account_host"] = azure_account_host(host)
    return options


def azure_account_host(value: str) -> str:
    """``AZURE_STORAGE_ACCOUNT_HOST`` as adlfs's ``account_host``: without an ``https://``
    prefix or trailing ``/``. ``ValueError`` for an ``http://`` endpoint or an empty host."""
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() != "https":
        raise ValueError(
            f"AZURE_STORAGE_ACCOUNT_HOST={display_url(value)}: account hosts are reached over "
            "HTTPS only; for a plain-HTTP blob endpoint set AZURE_STORAGE_CONNECTION_STRING "
            "with BlobEndpoint=<url> instead"
        )
    host = (rest if sep else value).rstrip("/")
    if not host or host.startswith("/"):
        raise ValueError(f"AZURE_STORAGE_ACCOUNT_HOST={value!r} names no host")
    return host


class StoreError(OSError):
    """A listing or download failed; the message is redacted."""


@dataclass(frozen=True)
class RemoteVersion:
    """One complete, stable version in an object store, as the source accepted it.

    ``files``: ``(relative name, size in bytes)`` of every object of the version, sorted;
    ``fingerprint``: the digest of the listing they come from (changes with any name, size
    or entity tag); ``store``: how to reach it.
    """

    name: str
    version: int
    url: str
    files: tuple[tuple[str, int], ...]
    fingerprint: str
    store: ObjectStore = field(compare=False, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def file_size(self, relative_name: str) -> int | None:
        """The size of ``relative_name`` in this version (None when absent)."""
        for name, size in self.files:
            if name == relative_name:
                return size
        return None

    def __str__(self) -> str:
        return display_url(self.url)


def _safe_relative(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and all(part not in ("", ".", "..") for part in parts)


def _tag_number(info: Mapping[str, Any]) -> int:
    """An integer standing for an object's content identity (entity tag, generation, or
    modification time), for the listing's third column."""
    for key in ("ETag", "etag", "generation", "md5Hash", "LastModified", "last_modified"):
        value = info.get(key)
        if value:
            break
    else:
        value = info.get("mtime") or info.get("updated") or info.get("created") or ""
    digest = hashlib.blake2b(str(value).encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


#: How long one listing of a base path may take before the store counts as down.
LIST_DEADLINE_SECONDS = 60.0


#: The errors of writing a version's local copy that are the cache disk's (full, over quota,
#: read-only), not the store's: :meth:`ObjectStore.download` raises them as they are (not
#: as ``StoreError``), and they are not worth retrying at once.
LOCAL_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class ObjectStore:
    """The fsspec filesystem behind one remote base path.

    ``filesystem`` is injectable for tests; by default it comes from the URL's scheme and
    :func:`storage_options`. Instances are thread-safe (fsspec's async filesystems run their
    requests on fsspec's own event-loop thread).
    """

    def __init__(
        self, url: str, filesystem: Any = None, *, list_deadline: float = LIST_DEADLINE_SECONDS
    ) -> None:
        self.scheme = scheme_of(url)
        if filesystem is None:
            filesystem = _filesystem_for(url)
        self.fs = filesystem
        self.list_deadline = list_deadline
        self._skipped: set[str] = set()
        self._listing_lock = threading.Lock()
        self._listing: concurrent.futures.Future[Any] | None = None
        self._listing_since = 0.0

    def _find(self, root: str) -> Any:
        """``fs.find(root)`` within ``list_deadline`` seconds, else ``StoreError``.

        A store that accepts connections and never answers would otherwise hold the poll
        (every model's) for as long as its client's timeouts and retries allow (minutes for
        S3; GCS's and Azure's clients set none). The listing runs on a thread of its own;
        past the deadline the poll goes on and the store counts as down, and while that
        listing has still not returned, later polls do not start another (no thread piles
        up behind a hung store): they fail at once. ``list_deadline`` <= 0: no limit (the
        listing runs on the caller's thread)."""
        try:
            if self.list_deadline <= 0:
                return self.fs.find(root, detail=True, withdirs=False)
            return self._find_in_thread(root)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(redact(f"{type(exc).__name__}: {exc}")) from None

    def _find_in_thread(self, root: str) -> Any:
        """:meth:`_find` with a deadline: ``StoreError`` past it, or while the previous
        listing has still not returned; the filesystem's own exception otherwise."""
        with self._listing_lock:
            pending = self._listing
            if pending is not None and not pending.done():
                raise StoreError(
                    f"the listing started {time.monotonic() - self._listing_since:.0f}s ago "
                    "has not answered yet"
                )
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._listing = future
            self._listing_since = time.monotonic()

        def run() -> None:
            try:
                future.set_result(self.fs.find(root, detail=True, withdirs=False))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="pyserving-store-list", daemon=True).start()
        try:
            return future.result(timeout=self.list_deadline)
        except concurrent.futures.TimeoutError:
            raise StoreError(
                f"TimeoutError: no answer to the listing in {self.list_deadline:.0f}s"
            ) from None

    def root(self, url: str) -> str:
        """The store path of ``url`` (no scheme, no trailing ``/``)."""
        return str(self.fs._strip_protocol(url)).rstrip("/")

    def list_tree(self, url: str) -> dict[str, dict[str, tuple[int, int]]]:
        """Every object under ``url`` in one recursive listing, grouped by first component:
        ``{child name: {relative name: (size, tag number)}}`` (a child holding only
        placeholders maps to ``{}``). ``StoreError`` when the listing fails."""
        root = self.root(url)
        found = self._find(root)
        tree: dict[str, dict[str, tuple[int, int]]] = {}
        prefix = root + "/"
        for path, info in found.items():
            if not path.startswith(prefix) or info.get("type", "file") != "file":
                continue
            child, slash, rest = path[len(prefix) :].partition("/")
            if not child or not slash:
                continue  # an object beside the versions, not under one
            entries = tree.setdefault(child, {})
            if not rest or rest.endswith("/"):
                continue  # a directory placeholder
            if not _safe_relative(rest):
                if path not in self._skipped:
                    self._skipped.add(path)
                    log.warning(
                        "Object %s has a name that cannot be copied to a local directory; "
                        "it is ignored",
                        redact(path),
                    )
                continue
            entries[rest] = (int(info.get("size") or 0), _tag_number(info))
        return tree

    def download(self, url: str, files: Sequence[tuple[str, int]], destination: str) -> int:
        """Copy ``files`` (relative to ``url``) into ``destination``, skipping those already
        there with the listed size; then check every size. Returns the bytes copied;
        ``StoreError`` when a copy fails or a size differs from the listing (the object
        changed since it was listed); ``OSError`` when ``destination`` cannot be written."""
        root = self.root(url)
        remote: list[str] = []
        local: list[str] = []
        copied = 0
        for name, size in files:
            target = os.path.join(destination, *name.split("/"))
            if _size_of(target) == size:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            remote.append(f"{root}/{name}")
            local.append(target)
            copied += size
        if remote:
            try:
                self.fs.get(remote, local)
            except Exception as exc:
                if isinstance(exc, OSError) and exc.errno in LOCAL_WRITE_ERRORS:
                    raise  # the cache's disk, not the store
                raise StoreError(redact(f"{type(exc).__name__}: {exc}")) from None
        for name, size in files:
            actual = _size_of(os.path.join(destination, *name.split("/")))
            if actual != size:
                raise StoreError(
                    f"{name} is {actual if actual is not None else 'missing'} bytes after "
                    f"copying, the listing said {size}: it changed in the store since"
                )
        return copied


def _size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _filesystem_for(url: str) -> Any:
    scheme = scheme_of(url)
    options = storage_options(scheme)
    if REMOTE_SCHEMES.get(scheme, ("", ""))[1] == "gcs":
        # gcsfs's default class asks each bucket for its layout first (one more request per
        # call, and a warning per call without credentials); the core class lists directly.
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(**options)
    import fsspec

    filesystem, _ = fsspec.core.url_to_fs(url, **options)
    return filesystem


class RemoteStoragePathSource(StoragePathSource[RemoteVersion]):
    """Emits :class:`RemoteVersion` values for servables whose base path is a store URL.

    ``on_store_event`` hears about every listing; ``store_factory(url)`` builds the
    :class:`ObjectStore` of a base path (injectable for tests); ``on_aspired(aspired,
    configured)`` is called after each poll with, per servable listed successfully in it,
    the versions emitted (``{name: {(version, fingerprint)}}``), and the names configured
    (the cache deletes copies no longer needed from it).
    """

    thread_name = "pyserving-remote-source"

    def __init__(
        self,
        servables: Sequence[ServableSourceConfig] = (),
        poll_wait_seconds: float = 1.0,
        *,
        require_stable: bool | None = None,
        on_store_event: StoreEventCallback | None = None,
        store_factory: Callable[[str], ObjectStore] = ObjectStore,
        on_aspired: Callable[[dict[str, set[tuple[int, str]]], set[str]], None] | None = None,
    ) -> None:
        super().__init__(servables, poll_wait_seconds, require_stable=require_stable)
        self._on_store_event = on_store_event
        self._store_factory = store_factory
        self._on_aspired = on_aspired
        self._stores: dict[str, ObjectStore] = {}
        self._trees: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}
        self._unreachable: set[str] = set()
        self._aspired: dict[str, set[tuple[int, str]]] = {}
        self._aspired_lock = threading.Lock()

    def store(self, base_path: str) -> ObjectStore:
        """The store of ``base_path`` (built once per base path)."""
        store = self._stores.get(base_path)
        if store is None:
            store = self._store_factory(base_path)
            self._stores[base_path] = store
        return store

    def poll_once(self) -> None:
        super().poll_once()
        with self._lock:
            configured = set(self._servables)
        with self._aspired_lock:
            for name in set(self._aspired) - configured:
                del self._aspired[name]
            aspired = {name: set(keys) for name, keys in self._aspired.items()}
        if self._on_aspired is not None:
            self._on_aspired(aspired, configured)

    def _scan(self, servable: ServableSourceConfig) -> list[ServableData[RemoteVersion]] | None:
        emitted = super()._scan(servable)
        if emitted is not None:
            keys = {(d.id.version, d.fingerprint) for d in emitted if d.ok and d.fingerprint}
            with self._aspired_lock:
                self._aspired[servable.name] = keys
        return emitted

    def _list_versions(self, servable: ServableSourceConfig) -> dict[int, str]:
        base = servable.base_path.rstrip("/")
        try:
            store = self.store(servable.base_path)
            tree = store.list_tree(base)
        except Exception as exc:
            error = exc if isinstance(exc, StoreError) else StoreError(redact(str(exc)))
            self._unreachable.add(servable.name)
            self._report(servable.name, "list", False)
            raise error from None
        if servable.name in self._unreachable:
            self._unreachable.discard(servable.name)
            log.info(
                "Model store at %s answers again for servable %s",
                display_url(servable.base_path),
                servable.name,
            )
        self._report(servable.name, "list", True)
        if not tree:
            # An object store has no directories: a prefix without objects does not exist.
            # As for a local base path that does not exist, nothing is emitted, so the
            # versions loaded keep serving (TF Serving never emits an empty version list for
            # a base path it cannot find), rather than being unloaded because every object
            # was deleted for a moment (a sync with --delete, a republish).
            raise OSError(f"no object under {display_url(servable.base_path)}: no such base path")
        self._trees[servable.name] = tree
        found: dict[int, str] = {}
        for child in sorted(tree):
            version = parse_version(child)
            if version is not None and version not in found:
                found[version] = f"{base}/{child}"
        return found

    def _version_listing(
        self, servable: ServableSourceConfig, version: int, path: str
    ) -> tuple[ListingEntry, ...]:
        child = path.rsplit("/", 1)[-1]
        entries = self._trees.get(servable.name, {}).get(child, {})
        return tuple(sorted((name, size, tag) for name, (size, tag) in entries.items()))

    def _value(
        self,
        servable: ServableSourceConfig,
        version: int,
        path: str,
        listing: tuple[ListingEntry, ...],
        fingerprint: str,
    ) -> RemoteVersion:
        files = tuple((name, size) for name, size, _ in listing)
        return RemoteVersion(
            servable.name, version, path, files, fingerprint, self.store(servable.base_path)
        )

    def _display(self, path: str) -> str:
        return display_url(path)

    def _report(self, name: str, operation: str, ok: bool) -> None:
        if self._on_store_event is not None:
            try:
                self._on_store_event(name, operation, ok, 0)
            except Exception:
                log.exception("store event callback failed")
