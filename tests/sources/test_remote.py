"""The object-store source and the local model cache, on fsspec's in-memory store.

The same rules as the file-system source (complete, stable, fingerprinted versions), one
listing per servable per poll, an unreachable store changing nothing, downloads that are
atomic, verified, retried and resumed, and cached copies deleted once unneeded. The real
stores (S3 on moto, GCS on its emulator, Azure on Azurite) are in tests/e2e.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import pathlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import pytest

from pyserving.core.loader import Loader, ResourceEstimate
from pyserving.core.source import ServableData
from pyserving.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from pyserving.sources import cache as cache_module
from pyserving.sources.cache import CachedVersionLoader, ModelCache
from pyserving.sources.filesystem import (
    SAVED_MODEL_MARKERS,
    ServableSourceConfig,
    ServableVersionPolicy,
)
from pyserving.sources.remote import (
    ObjectStore,
    RemoteStoragePathSource,
    RemoteVersion,
    StoreError,
    check_base_path,
    display_url,
    is_remote,
    local_path,
    redact,
    scheme_of,
    storage_options,
)

_counter = itertools.count()


class SpyFileSystem:
    """An fsspec filesystem wrapper counting calls; ``fail_find`` / ``fail_get`` make the
    next calls raise, ``truncate_after`` copies that many files then fails midway."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.calls: list[str] = []
        self.fail_find: Exception | None = None
        self.fail_get = 0
        self.truncate_after: int | None = None
        self.copied: list[str] = []

    def _strip_protocol(self, path: str) -> str:
        return str(self.fs._strip_protocol(path))

    def find(self, path: str, **kwargs: Any) -> Any:
        self.calls.append("find")
        if self.fail_find is not None:
            raise self.fail_find
        return self.fs.find(path, **kwargs)

    def get(self, remote: Sequence[str], local: Sequence[str]) -> None:
        self.calls.append("get")
        if self.fail_get:
            self.fail_get -= 1
            raise ConnectionResetError("Connection reset by peer")
        for index, (rpath, lpath) in enumerate(zip(remote, local, strict=True)):
            if self.truncate_after is not None and index >= self.truncate_after:
                self.truncate_after = None
                with open(lpath, "wb") as f:
                    f.write(self.fs.cat_file(rpath)[:1])  # a partial file
                raise TimeoutError("read timed out")
            self.fs.get_file(rpath, lpath)
            self.copied.append(rpath)

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.fs, name)


@pytest.fixture
def store() -> Iterator[tuple[str, SpyFileSystem]]:
    """A fresh base URL on the in-memory store, and a spy on the filesystem."""
    fs = fsspec.filesystem("memory")
    base = f"memory://models{next(_counter)}-{os.getpid()}/m"
    yield base, SpyFileSystem(fs)
    fs.rm(fs._strip_protocol(base).split("/")[0], recursive=True)


def put(spy: SpyFileSystem, url: str, data: bytes = b"x") -> None:
    spy.fs.pipe_file(spy.fs._strip_protocol(url), data)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[ServableData[RemoteVersion]]]] = []

    def __call__(self, name: str, versions: Sequence[ServableData[Any]]) -> None:
        self.calls.append((name, list(versions)))

    def last(self) -> dict[int, ServableData[RemoteVersion]]:
        return {d.id.version: d for d in self.calls[-1][1]}


def make_source(
    base: str, spy: SpyFileSystem, events: list[tuple[str, str, bool, int]] | None = None
) -> tuple[RemoteStoragePathSource, Recorder]:
    config = ServableSourceConfig("m", base, complete_markers=SAVED_MODEL_MARKERS)
    source = RemoteStoragePathSource(
        [config],
        -1,
        require_stable=True,
        store_factory=lambda url: ObjectStore(url, spy),
        on_store_event=None if events is None else lambda *e: events.append(e),
    )
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    return source, recorder


# ---------------------------------------------------------------------- helpers


def test_redact_hides_secret_environment_values_and_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=k3y==;")
    text = redact(
        "failed with s3cr3t-value; AccountName=a;AccountKey=k3y==; "
        "https://a.blob.core.windows.net/c?sv=1&sig=abc%2B&se=2 http://user:pw@host/x"
    )
    assert "s3cr3t-value" not in text and "k3y" not in text and "abc%2B" not in text
    assert "pw@" not in text and "http://***@host/x" in text
    assert redact("AccountName=devstore;AccountKey=abc;") == "AccountName=devstore;AccountKey=***;"


def test_display_url_drops_query_and_password() -> None:
    assert display_url("az://c/m?sv=1&sig=secret") == "az://c/m"
    assert display_url("s3://bucket/models/m") == "s3://bucket/models/m"
    assert display_url("abfs://c@acct.dfs.core.windows.net/m") == (
        "abfs://c@acct.dfs.core.windows.net/m"
    )


def test_schemes() -> None:
    assert scheme_of("S3://b/m") == "s3" and scheme_of("/models/m") == ""
    assert all(is_remote(u) for u in ("s3://b/m", "gs://b/m", "az://c/m", "abfs://c@a/m"))
    assert not is_remote("/models/m") and not is_remote("file:///models/m")
    assert local_path("file:///models/m") == "/models/m"
    assert local_path("/models/m") == "/models/m"


def test_check_base_path() -> None:
    check_base_path("m", "/models/m")
    check_base_path("m", "s3://bucket/m")
    check_base_path("m", "gs://bucket/m")
    check_base_path("m", "az://container/m")
    with pytest.raises(Exception, match=r"the hdfs:// scheme is not supported"):
        check_base_path("m", "hdfs://namenode/m")


def test_storage_options_from_tf_serving_variables() -> None:
    options = storage_options("s3", {"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"})
    assert options["endpoint_url"] == "http://minio:9000"
    assert options["use_listings_cache"] is False
    # botocore reads AWS_ENDPOINT_URL itself: not overridden
    both = {"S3_ENDPOINT": "minio:9000", "AWS_ENDPOINT_URL": "http://other:9000"}
    assert "endpoint_url" not in storage_options("s3", both)
    assert storage_options("s3", {"S3_VERIFY_SSL": "0"})["client_kwargs"] == {"verify": False}
    assert storage_options("gs", {"STORAGE_EMULATOR_HOST": "http://h:1"})["token"] == "anon"
    assert "token" not in storage_options("gs", {})


def test_storage_options_azure_account_host() -> None:
    """``AZURE_STORAGE_ACCOUNT_HOST`` becomes adlfs's ``account_host`` (HTTPS only)."""
    assert "account_host" not in storage_options("az", {})
    for value in ("acct.blob.core.chinacloudapi.cn", "https://acct.blob.core.chinacloudapi.cn/"):
        options = storage_options("abfs", {"AZURE_STORAGE_ACCOUNT_HOST": value})
        assert options == {
            "use_listings_cache": False,
            "account_host": "acct.blob.core.chinacloudapi.cn",
        }
    emulator = {"AZURE_STORAGE_ACCOUNT_HOST": " 127.0.0.1:10000/devstoreaccount1 "}
    assert storage_options("az", emulator)["account_host"] == "127.0.0.1:10000/devstoreaccount1"
    with pytest.raises(ValueError, match=r"HTTPS only; .* BlobEndpoint="):
        storage_options("az", {"AZURE_STORAGE_ACCOUNT_HOST": "http://127.0.0.1:10000/acct"})
    with pytest.raises(ValueError, match="names no host"):
        storage_options("az", {"AZURE_STORAGE_ACCOUNT_HOST": "https://"})
    assert "account_host" not in storage_options("s3", {"AZURE_STORAGE_ACCOUNT_HOST": "h"})


# ---------------------------------------------------------------------- the source


def test_one_listing_per_poll_and_the_files_emitted(
    store: tuple[str, SpyFileSystem],
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb", b"pb" * 10)
    put(spy, f"{base}/1/variables/variables.index", b"i" * 3)
    put(spy, f"{base}/1/variables/variables.data-00000-of-00001", b"d" * 7)
    put(spy, f"{base}/2/", b"")  # a placeholder: version 2 exists, empty
    put(spy, f"{base}/README", b"not a version")
    source, recorder = make_source(base, spy)
    source.poll_once()
    assert spy.calls == ["find"]
    (version,) = recorder.last().values()
    value = version.value()
    assert (value.name, value.version, value.url) == ("m", 1, f"{base}/1")
    assert value.files == (
        ("saved_model.pb", 20),
        ("variables/variables.data-00000-of-00001", 7),
        ("variables/variables.index", 3),
    )
    assert value.total_bytes == 30 and version.fingerprint == value.fingerprint
    source.poll_once()
    source.poll_once()
    assert spy.calls == ["find"] * 3


def test_a_version_uploaded_model_file_last_is_emitted_once_complete_and_unchanged(
    store: tuple[str, SpyFileSystem],
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    source, recorder = make_source(base, spy)
    source.poll_once()
    assert list(recorder.last()) == [1]
    put(spy, f"{base}/2/variables/variables.index")
    source.poll_once()
    put(spy, f"{base}/2/variables/variables.data-00000-of-00001")
    source.poll_once()
    assert list(recorder.last()) == [1]
    put(spy, f"{base}/2/saved_model.pb")
    source.poll_once()  # complete, first seen so
    assert list(recorder.last()) == [1]
    source.poll_once()  # unchanged since: accepted, and 1 is no longer aspired
    assert list(recorder.last()) == [2]
    assert recorder.last()[2].value().file_size("saved_model.pb") == 1


def test_new_content_under_the_same_version_changes_the_fingerprint(
    store: tuple[str, SpyFileSystem],
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb", b"a")
    source, recorder = make_source(base, spy)
    source.poll_once()
    first = recorder.last()[1].fingerprint
    put(spy, f"{base}/1/saved_model.pb", b"bb")
    source.poll_once()
    assert recorder.last()[1].fingerprint == first  # changing: the old content is emitted
    assert recorder.last()[1].value().files == (("saved_model.pb", 1),)
    source.poll_once()
    assert recorder.last()[1].fingerprint != first
    assert recorder.last()[1].value().files == (("saved_model.pb", 2),)


def test_unreachable_store_emits_nothing_and_is_reported(
    store: tuple[str, SpyFileSystem],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key")
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    events: list[tuple[str, str, bool, int]] = []
    source, recorder = make_source(base, spy, events)
    source.poll_once()
    assert len(recorder.calls) == 1 and events == [("m", "list", True, 0)]
    spy.fail_find = ConnectionRefusedError("connect failed, key very-secret-key")
    with caplog.at_level(logging.INFO, logger="pyserving"):
        for _ in range(3):
            source.poll_once()
        assert len(recorder.calls) == 1  # nothing emitted: the loaded versions stay aspired
        assert events[1:] == [("m", "list", False, 0)] * 3
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # once until it changes
        assert "Could not read base path" in warnings[0]
        assert "ConnectionRefusedError" in warnings[0]
        assert "very-secret-key" not in caplog.text
        spy.fail_find = None
        source.poll_once()
        assert "answers again for servable m" in caplog.text
    assert list(recorder.last()) == [1]


def test_a_base_path_emptied_of_every_object_keeps_the_versions_loaded(
    store: tuple[str, SpyFileSystem], caplog: pytest.LogCaptureFixture
) -> None:
    """A prefix without objects does not exist in an object store: as for a local base path
    that does not exist, nothing is emitted (TF Serving never emits an empty list for a base
    path it cannot find), so a republish that deletes everything first unloads nothing."""
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    source, recorder = make_source(base, spy, [])
    source.poll_once()
    assert list(recorder.last()) == [1]
    spy.fs.rm(spy.fs._strip_protocol(f"{base}/1"), recursive=True)
    with caplog.at_level(logging.WARNING, logger="pyserving"):
        source.poll_once()
    assert len(recorder.calls) == 1  # nothing emitted
    assert f"Could not read base path {base} for servable m" in caplog.text
    assert "no such base path" in caplog.text
    put(spy, f"{base}/2/saved_model.pb")
    source.poll_once()  # the base path exists again: version 1 is gone, 2 is new
    source.poll_once()  # and unchanged since
    assert list(recorder.last()) == [2]


def test_a_store_that_never_answers_counts_as_down_within_the_deadline(
    store: tuple[str, SpyFileSystem],
) -> None:
    """A store accepting connections but never answering: the listing gives up after the
    deadline (the poll goes on; the store is reported down); while it still hangs, later
    listings fail at once instead of piling threads up; once it answers, listings work."""
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    hang = threading.Event()
    original = spy.find

    def find(path: str, **kwargs: Any) -> Any:
        hang.wait()
        return original(path, **kwargs)

    spy.find = find  # type: ignore[method-assign]
    events: list[tuple[str, str, bool, int]] = []
    source = RemoteStoragePathSource(
        [ServableSourceConfig("m", base, complete_markers=SAVED_MODEL_MARKERS)],
        -1,
        store_factory=lambda url: ObjectStore(url, spy, list_deadline=0.2),
        on_store_event=lambda *e: events.append(e),
    )
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    objects = ObjectStore(base, spy, list_deadline=0.2)
    with pytest.raises(StoreError, match=r"TimeoutError: no answer to the listing in 0s"):
        objects.list_tree(base)
    with pytest.raises(StoreError, match=r"has not answered yet"):
        objects.list_tree(base)  # at once: the first listing still hangs
    source.poll_once()
    assert recorder.calls == [] and events == [("m", "list", False, 0)]
    hang.set()
    spy.find = original  # type: ignore[method-assign]
    for _ in range(100):  # the hung listing returns on its own thread
        try:
            assert "1" in objects.list_tree(base)
            break
        except StoreError:
            threading.Event().wait(0.05)
    else:
        pytest.fail("the store never answered again")
    for _ in range(100):  # the source's own hung listing returns on its thread too
        source.poll_once()
        if recorder.calls:
            break
        threading.Event().wait(0.05)
    assert list(recorder.last()) == [1]


def test_a_listing_without_a_deadline_runs_on_the_callers_thread(
    store: tuple[str, SpyFileSystem],
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    threads: list[str] = []
    original = spy.find

    def find(path: str, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(path, **kwargs)

    spy.find = find  # type: ignore[method-assign]
    assert "1" in ObjectStore(base, spy, list_deadline=0).list_tree(base)
    assert "1" in ObjectStore(base, spy, list_deadline=30).list_tree(base)
    assert threads == [threading.current_thread().name, "pyserving-store-list"]


def test_unsafe_object_names_are_left_out(
    store: tuple[str, SpyFileSystem], caplog: pytest.LogCaptureFixture
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    root = spy.fs._strip_protocol(base)
    spy.fs.store[f"{root}/1/a/../../../escape"] = spy.fs.store[f"{root}/1/saved_model.pb"]
    source, recorder = make_source(base, spy)
    with caplog.at_level(logging.WARNING):
        source.poll_once()
    assert recorder.last()[1].value().files == (("saved_model.pb", 1),)
    assert "cannot be copied to a local directory" in caplog.text


# ---------------------------------------------------------------------- the cache


def remote_version(base: str, spy: SpyFileSystem, version: int = 1) -> RemoteVersion:
    source, recorder = make_source(base, spy)
    source.poll_once()
    return recorder.last()[version].value()


def test_download_once_into_place(store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb", b"p" * 5)
    put(spy, f"{base}/1/variables/variables.index", b"i" * 2)
    version = remote_version(base, spy)
    cache = ModelCache(str(tmp_path / "cache"))
    events: list[tuple[str, str, bool, int]] = []
    path = cache.fetch(version, on_store_event=lambda *e: events.append(e))
    assert path == str(tmp_path / "cache" / "m" / f"1-{version.fingerprint}")
    assert (pathlib.Path(path) / "variables" / "variables.index").read_bytes() == b"ii"
    assert events == [("m", "download", True, 7)]
    assert cache.fetch(version) == path
    assert spy.copied.count(spy.fs._strip_protocol(f"{base}/1/saved_model.pb")) == 1
    cache.close()
    # A later server with the same directory uses the copy as it is.
    again = ModelCache(str(tmp_path / "cache"))
    assert again.fetch(version) == path
    assert spy.calls.count("get") == 1
    again.close()


def test_failed_download_is_retried_resumed_and_never_visible_half(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module.time, "sleep", lambda _s: None)
    base, spy = store
    for name in ("saved_model.pb", "variables/a", "variables/b"):
        put(spy, f"{base}/1/{name}", b"content")
    version = remote_version(base, spy)
    cache = ModelCache(str(tmp_path / "cache"))
    spy.truncate_after = 1  # the second file breaks off midway
    events: list[tuple[str, str, bool, int]] = []
    path = cache.fetch(version, attempts=3, on_store_event=lambda *e: events.append(e))
    assert [e[2] for e in events] == [False, True]
    assert sorted(p.name for p in (tmp_path / "cache" / "m").iterdir()) == [
        ".pyserving-model-cache",  # the cache's marker
        f"1-{version.fingerprint}",
    ]
    for name in ("saved_model.pb", "variables/a", "variables/b"):
        assert (pathlib.Path(path) / name).read_bytes() == b"content"
    first = spy.fs._strip_protocol(f"{base}/1/saved_model.pb")
    assert spy.copied.count(first) == 1  # resumed: the complete file was not copied again
    cache.close()


def test_download_failing_every_attempt_leaves_nothing(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module.time, "sleep", lambda _s: None)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-secret-key")
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    version = remote_version(base, spy)
    cache = ModelCache(str(tmp_path / "cache"))
    spy.fail_get = 5
    with pytest.raises(Unavailable, match=r"Could not copy servable .* \(2 attempts\)"):
        cache.fetch(version, attempts=2)
    assert [p.name for p in (tmp_path / "cache" / "m").iterdir()] == [".pyserving-model-cache"]
    cache.close()


def test_a_full_cache_disk_is_named_and_not_taken_for_a_store_failure(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No space left for the copy: RESOURCE_EXHAUSTED naming the cache directory, at once
    (the store is not at fault: no retry, no store error counted), nothing left behind."""
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    version = remote_version(base, spy)
    cache = ModelCache(str(tmp_path / "cache"))

    def full(remote: Sequence[str], local: Sequence[str]) -> None:
        spy.calls.append("get")
        raise OSError(errno.ENOSPC, "No space left on device")

    spy.get = full  # type: ignore[method-assign]
    events: list[tuple[str, str, bool, int]] = []
    with pytest.raises(ResourceExhausted) as info:
        cache.fetch(version, attempts=3, on_store_event=lambda *e: events.append(e))
    assert info.value.message == (
        f"Could not copy servable {{name: m version: 1}} into the model cache directory "
        f"{tmp_path / 'cache'}: No space left on device"
    )
    assert spy.calls.count("get") == 1 and events == []
    assert [p.name for p in (tmp_path / "cache" / "m").iterdir()] == [".pyserving-model-cache"]

    # Full before anything is copied (making the partial copy's directory): the same.
    def no_room(*args: Any, **kwargs: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.tempfile, "mkdtemp", no_room)
    with pytest.raises(ResourceExhausted, match=r"into the model cache directory .*: No space"):
        cache.fetch(version)
    cache.close()


def test_content_changed_since_listing_is_refused(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module.time, "sleep", lambda _s: None)
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb", b"old")
    version = remote_version(base, spy)
    put(spy, f"{base}/1/saved_model.pb", b"newer content")
    cache = ModelCache(str(tmp_path / "cache"))
    with pytest.raises(Unavailable, match="it changed in the store since"):
        cache.fetch(version, attempts=1)
    assert not os.path.exists(cache.path_for(version))
    cache.close()


def test_copies_no_longer_needed_are_deleted(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    put(spy, f"{base}/2/saved_model.pb")
    cache = ModelCache(str(tmp_path / "cache"))
    cache.open()
    config = ServableSourceConfig("m", base, ServableVersionPolicy.all(), SAVED_MODEL_MARKERS)
    source = RemoteStoragePathSource(
        [config],
        -1,
        store_factory=lambda url: ObjectStore(url, spy),
        on_aspired=cache.update_aspired,
    )
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    # What an earlier run left: a copy of a model no longer configured, half a copy.
    leftover = tmp_path / "cache" / "gone" / f"3-{'ab' * 12}"
    leftover.mkdir(parents=True)
    (leftover.parent / ".pyserving-model-cache").touch()
    stale = tmp_path / "cache" / "m" / ".partial-2-xyz"
    stale.mkdir(parents=True)
    (stale.parent / ".pyserving-model-cache").touch()
    # What the cache did not make, in a directory shared with other files: kept.
    foreign = [
        tmp_path / "cache" / "someone_else" / "data" / "precious.txt",
        tmp_path / "cache" / "local_model" / "1" / "saved_model.pb",
        tmp_path / "cache" / "m" / "notes" / "todo.txt",
        tmp_path / "cache" / "gone" / "README",
    ]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep me")
    source.poll_once()
    v1, v2 = recorder.last()[1].value(), recorder.last()[2].value()
    assert not leftover.exists() and not stale.exists()
    assert all(path.read_text() == "keep me" for path in foreign)
    cache.acquire(v1)
    p1, p2 = cache.fetch(v1), cache.fetch(v2)
    spy.fs.rm(spy.fs._strip_protocol(f"{base}/1"), recursive=True)
    source.poll_once()  # 1 is no longer aspired, but in use: kept
    assert os.path.isdir(p1) and os.path.isdir(p2)
    cache.release(v1)  # unloaded: deleted
    assert not os.path.exists(p1) and os.path.isdir(p2)
    # A store that cannot be listed deletes nothing.
    spy.fail_find = OSError("unreachable")
    source.poll_once()
    assert os.path.isdir(p2)
    source.update_config([])
    spy.fail_find = None
    source.poll_once()
    assert not os.path.exists(p2)
    assert all(path.read_text() == "keep me" for path in foreign)
    cache.close()


def test_copies_from_before_the_marker_are_cleaned_up_too(tmp_path: pathlib.Path) -> None:
    """A cache directory written before model directories were marked: directories holding
    only the cache's own copies are taken as the cache's (and cleaned up); any other stays."""
    copy = f"3-{'ab' * 12}"
    older = tmp_path / "cache" / "older" / copy
    older.mkdir(parents=True)
    (older / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "cache" / "older" / ".partial-4-xyz").mkdir()
    mixed = tmp_path / "cache" / "mixed"
    (mixed / copy).mkdir(parents=True)
    (mixed / "mine.txt").write_text("keep me")
    cache = ModelCache(str(tmp_path / "cache"))
    cache.open()
    cache.update_aspired({}, set())
    assert not (tmp_path / "cache" / "older").exists()
    assert (mixed / copy).is_dir() and (mixed / "mine.txt").read_text() == "keep me"
    cache.close()


def test_one_server_per_cache_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ModelCache(str(tmp_path / "cache"))
    assert first.open() == str(tmp_path / "cache")
    with pytest.raises(FailedPrecondition, match="in use by another pyserving process"):
        ModelCache(str(tmp_path / "cache")).open()
    first.close()
    # The default directory falls back to one of the process's own, removed at close.
    monkeypatch.setattr(cache_module.tempfile, "gettempdir", lambda: str(tmp_path))
    a, b = ModelCache(), ModelCache()
    assert a.open() == str(tmp_path / "pyserving-model-cache")
    private = b.open()
    assert private == str(tmp_path / f"pyserving-model-cache-{os.getpid()}")
    b.close()
    assert not os.path.exists(private)
    a.close()


class FakeLoader(Loader):
    def __init__(self, path: str, fail: bool = False) -> None:
        self.path, self.fail, self.loaded = path, fail, False

    def estimate_resources(self) -> ResourceEstimate:
        return ResourceEstimate(ram_bytes=10)

    def load(self) -> None:
        if self.fail:
            raise NotFound("broken model")
        self.loaded = True

    def unload(self) -> None:
        self.loaded = False

    def servable(self) -> Any:
        return self.path


def test_cached_version_loader(store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb", b"x" * 1000)
    version = remote_version(base, spy)
    cache = ModelCache(str(tmp_path / "cache"))
    built: list[FakeLoader] = []

    def factory(path: str) -> Loader:
        built.append(FakeLoader(path))
        return built[-1]

    loader = CachedVersionLoader(version, cache, factory, ResourceEstimate(ram_bytes=1200))
    # The estimate comes from the listing: nothing downloaded, no inner loader yet.
    assert loader.estimate_resources() == ResourceEstimate(ram_bytes=1200)
    assert built == [] and "get" not in spy.calls
    loader.load()
    assert built[0].loaded and loader.servable() == cache.path_for(version)
    assert loader.estimate_resources() == ResourceEstimate(ram_bytes=10)  # never grows
    cache.update_aspired({"m": set()}, {"m"})
    assert os.path.isdir(cache.path_for(version))  # in use
    loader.unload()
    assert not os.path.exists(cache.path_for(version))

    failing = CachedVersionLoader(
        version, cache, lambda path: FakeLoader(path, fail=True), ResourceEstimate()
    )
    with pytest.raises(NotFound):
        failing.load()
    assert not os.path.exists(cache.path_for(version))  # released; not aspired: deleted
    with pytest.raises(FailedPrecondition):
        failing.servable()
    cache.close()


def test_a_copy_that_fails_to_load_is_copied_again(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path
) -> None:
    """Cached copies are checked by size only: one damaged on disk would fail every load
    retry. The first time a copy fails to load it is deleted (aspired or not) and downloaded
    again; later failures of the same version keep it (a broken version is not downloaded
    on every retry)."""
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb", b"x" * 1000)
    version = remote_version(base, spy)
    cache = ModelCache(str(tmp_path / "cache"))
    cache.update_aspired({"m": {(1, version.fingerprint)}}, {"m"})
    outcomes = [True, True, True, False]  # three failed loads, then one that succeeds

    def factory(path: str) -> Loader:
        return FakeLoader(path, fail=outcomes.pop(0))

    loader = CachedVersionLoader(version, cache, factory, ResourceEstimate())
    with pytest.raises(NotFound):
        loader.load()
    assert not os.path.exists(cache.path_for(version))  # the first failure: discarded
    downloads = spy.calls.count("get")
    for _ in range(2):  # the retries (the same loader)
        with pytest.raises(NotFound):
            loader.load()
        assert os.path.isdir(cache.path_for(version))  # kept: copied again only once
    assert spy.calls.count("get") == downloads + 1
    loader.load()
    assert os.path.isdir(cache.path_for(version))  # aspired and loaded: kept
    loader.unload()
    cache.close()


def test_each_worker_has_its_own_cache_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers of --num_workers share the flag's (or the default) directory, each in its own
    subdirectory: no lock conflict, and a restarted worker takes over its predecessor's."""
    given = [ModelCache(str(tmp_path / "cache"), f"worker-{i}") for i in range(2)]
    assert [c.open() for c in given] == [str(tmp_path / "cache" / f"worker-{i}") for i in range(2)]
    monkeypatch.setattr(cache_module.tempfile, "gettempdir", lambda: str(tmp_path))
    default = ModelCache("", "worker-0")
    assert default.open() == str(tmp_path / "pyserving-model-cache" / "worker-0")
    for c in (*given, default):
        c.close()


def test_store_errors_are_store_errors(store: tuple[str, SpyFileSystem]) -> None:
    base, spy = store
    spy.fail_find = RuntimeError("boom")
    with pytest.raises(StoreError, match="RuntimeError: boom"):
        ObjectStore(base, spy).list_tree(base)


def test_a_servable_handed_over_to_another_source_is_not_emitted_empty(
    tmp_path: pathlib.Path,
) -> None:
    """A model whose base path moves from a directory to a store (or back) is emitted by its
    new source only: an empty list from the old one would un-aspire the new one's versions."""
    from pyserving.sources.filesystem import FileSystemStoragePathSource

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"x")
    local = FileSystemStoragePathSource([ServableSourceConfig("m", str(tmp_path))], -1)
    recorder = Recorder()
    local.set_aspired_versions_callback(recorder)
    local.poll_once()
    local.update_config([], handed_over={"m"})
    local.poll_once()
    assert [name for name, _ in recorder.calls] == ["m"]
    local.update_config([ServableSourceConfig("m", str(tmp_path))])
    local.update_config([])  # dropped, not handed over: emitted empty
    local.poll_once()
    assert recorder.calls[-1] == ("m", [])


def test_sparse_mirror_has_the_listed_names_and_sizes() -> None:
    files = (("saved_model.pb", 10), ("variables/variables.data-00000-of-00001", 5 << 30))
    with cache_module.sparse_mirror(files) as mirror:
        big = os.stat(os.path.join(mirror, "variables", "variables.data-00000-of-00001"))
        assert big.st_size == 5 << 30
        assert big.st_blocks * 512 < 1 << 20  # no data written
        assert os.path.getsize(os.path.join(mirror, "saved_model.pb")) == 10
    assert not os.path.exists(mirror)


def test_estimate_from_the_listing_is_the_platforms_own(tmp_path: pathlib.Path) -> None:
    """Before anything is copied, a remote version is estimated as its platform's loader
    would estimate the local copy: SavedModel 1.2 x the files plus its overhead; TFLite per
    interpreter;
    sklearn with its overhead."""
    from tensorflow_serving.config import model_server_config_pb2

    from pyserving.core.source import ServableId
    from pyserving.platforms.registry import PlatformOptions, get_platform
    from pyserving.platforms.tensorflow.loader import SAVED_MODEL_OVERHEAD
    from pyserving.server.core import ServerCore, ServerCoreOptions

    def version(files: tuple[tuple[str, int], ...]) -> RemoteVersion:
        return RemoteVersion("m", 1, "memory://b/m/1", files, "fp", ObjectStore("memory://b/m"))

    def model(platform: str = "") -> Any:
        return model_server_config_pb2.ModelConfig(
            name="m", base_path="memory://b/m", model_platform=platform
        )

    id = ServableId("m", 1)
    saved = version((("saved_model.pb", 1000), ("variables/variables.index", 24)))
    tflite = version((("model.tflite", 1000), ("saved_model.pb", 5000)))
    sklearn = version((("model.joblib", 4096),))
    with ServerCore(ServerCoreOptions(prefer_tflite_model=True, num_tflite_pools=2)) as core:
        assert core._remote_estimate(model(), id, saved) == ResourceEstimate(
            ram_bytes=1228 + SAVED_MODEL_OVERHEAD
        )
        assert core._remote_estimate(model("tensorflow"), id, tflite) == ResourceEstimate(
            ram_bytes=2400
        )
        (tmp_path / "model.joblib").write_bytes(b"x" * 4096)
        expected = get_platform("sklearn").loader(str(tmp_path), PlatformOptions())
        assert core._remote_estimate(model(), id, sklearn) == expected.estimate_resources()
        assert expected.estimate_resources().ram_bytes > int(4096 * 1.2)  # its overhead
        # No platform takes the files: 1.2 x the listed bytes.
        assert core._remote_estimate(model(), id, version((("notes.txt", 100),))) == (
            ResourceEstimate(ram_bytes=120)
        )


def test_the_loader_asks_for_its_estimate_once(
    store: tuple[str, SpyFileSystem], tmp_path: pathlib.Path
) -> None:
    base, spy = store
    put(spy, f"{base}/1/saved_model.pb")
    version = remote_version(base, spy)
    calls: list[int] = []

    def estimate() -> ResourceEstimate:
        calls.append(1)
        return ResourceEstimate(ram_bytes=7)

    loader = CachedVersionLoader(version, ModelCache(str(tmp_path)), FakeLoader, estimate)
    assert calls == []  # built every poll: nothing computed until asked
    assert loader.estimate_resources() == loader.estimate_resources() == ResourceEstimate(7)
    assert calls == [1]
