"""The file-system storage path source on real temporary directories."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence

import pytest

from pyserving.core.source import ServableData
from pyserving.sources.filesystem import (
    FileSystemStoragePathSource,
    ServableSourceConfig,
    ServableVersionPolicy,
    list_versions,
    parse_version,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.paths: dict[tuple[str, int], str] = {}

    def __call__(self, name: str, versions: Sequence[ServableData[str]]) -> None:
        self.calls.append((name, [d.id.version for d in versions]))
        for d in versions:
            self.paths[(name, d.id.version)] = d.value()

    def last(self, name: str) -> list[int] | None:
        for n, versions in reversed(self.calls):
            if n == name:
                return versions
        return None


def make_source(
    base: pathlib.Path, policy: ServableVersionPolicy | None = None, name: str = "m"
) -> tuple[FileSystemStoragePathSource, Recorder]:
    config = ServableSourceConfig(name, str(base), policy or ServableVersionPolicy.latest())
    source = FileSystemStoragePathSource([config], poll_wait_seconds=-1)
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    return source, recorder


@pytest.mark.parametrize(
    ("name", "version"),
    [("1", 1), ("00000123", 123), ("0", 0), (str(2**63 - 1), 2**63 - 1)]
    + [(bad, None) for bad in ("", "-1", "+1", " 1", "1_0", "1.0", "abc", "1a", str(2**63))],
)
def test_parse_version(name: str, version: int | None) -> None:
    assert parse_version(name) == version


def test_only_int_directories_are_versions(tmp_path: pathlib.Path) -> None:
    for d in ("1", "0002", "tmp", "3x"):
        (tmp_path / d).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert sorted(list_versions(str(tmp_path))) == [1, 2]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ServableVersionPolicy.latest(), [5]),
        (ServableVersionPolicy.latest(2), [3, 5]),
        (ServableVersionPolicy.latest(10), [1, 3, 5]),
        (ServableVersionPolicy.all(), [1, 3, 5]),
        (ServableVersionPolicy.specific([1, 3, 9]), [1, 3]),
    ],
)
def test_version_policies(
    tmp_path: pathlib.Path, policy: ServableVersionPolicy, expected: list[int]
) -> None:
    for v in (1, 3, 5):
        (tmp_path / str(v)).mkdir()
    source, recorder = make_source(tmp_path, policy)
    source.poll_once()
    assert recorder.last("m") == expected


def test_new_version_appears_and_vanished_is_unaspired(tmp_path: pathlib.Path) -> None:
    (tmp_path / "1").mkdir()
    source, recorder = make_source(tmp_path, ServableVersionPolicy.all())
    source.poll_once()
    assert recorder.last("m") == [1]
    (tmp_path / "2").mkdir()
    source.poll_once()
    assert recorder.last("m") == [1, 2]
    (tmp_path / "1").rmdir()
    source.poll_once()
    assert recorder.last("m") == [2]
    assert recorder.paths[("m", 2)] == str(tmp_path / "2")


def test_leading_zeros_resolve_to_path(tmp_path: pathlib.Path) -> None:
    (tmp_path / "00000123").mkdir()
    source, recorder = make_source(tmp_path)
    source.poll_once()
    assert recorder.paths[("m", 123)] == str(tmp_path / "00000123")


def test_no_versions_logs_once(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "not_a_version").mkdir()
    source, recorder = make_source(tmp_path)
    with caplog.at_level(logging.WARNING):
        source.poll_once()
        source.poll_once()
    lines = [r.getMessage() for r in caplog.records if "No versions of servable" in r.message]
    assert lines == [f"No versions of servable m found under base path {tmp_path}"]
    assert recorder.last("m") == []


def test_missing_base_path_changes_nothing(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "model"
    (base / "1").mkdir(parents=True)
    source, recorder = make_source(base)
    source.poll_once()
    assert recorder.calls == [("m", [1])]
    (base / "1").rmdir()
    base.rmdir()
    with caplog.at_level(logging.WARNING):
        source.poll_once()
    assert recorder.calls == [("m", [1])]  # nothing emitted: loaded versions keep serving
    assert any("Could not read base path" in r.message for r in caplog.records)


def test_removed_servable_is_emitted_empty(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a" / "1").mkdir(parents=True)
    (tmp_path / "b" / "1").mkdir(parents=True)
    a = ServableSourceConfig("a", str(tmp_path / "a"))
    b = ServableSourceConfig("b", str(tmp_path / "b"))
    source = FileSystemStoragePathSource([a, b], poll_wait_seconds=-1)
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    source.poll_once()
    source.update_config([a])
    recorder.calls.clear()
    source.poll_once()
    assert recorder.calls == [("b", []), ("a", [1])]


def test_poll_modes(tmp_path: pathlib.Path) -> None:
    (tmp_path / "1").mkdir()
    config = [ServableSourceConfig("m", str(tmp_path))]
    for wait, expected_calls in ((-1, 0), (0, 1)):
        source = FileSystemStoragePathSource(config, poll_wait_seconds=wait)
        recorder = Recorder()
        source.set_aspired_versions_callback(recorder)
        with source:
            source.start()
        assert len(recorder.calls) == expected_calls


def test_periodic_poll_picks_up_new_version(tmp_path: pathlib.Path) -> None:
    import threading

    (tmp_path / "1").mkdir()
    source = FileSystemStoragePathSource(
        [ServableSourceConfig("m", str(tmp_path))], poll_wait_seconds=0.01
    )
    seen = threading.Event()

    def callback(name: str, versions: Sequence[ServableData[str]]) -> None:
        if [d.id.version for d in versions] == [2]:
            seen.set()

    source.set_aspired_versions_callback(callback)
    with source:
        source.start()
        (tmp_path / "2").mkdir()
        assert seen.wait(30)
