"""Half-written versions are never handed over: the source's completeness and stability rules.

Polls are explicit (``poll_once``) with ``require_stable=True``, so each test is a fixed
sequence of polls and file-system changes.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence

import pytest

from pyserving.core.source import ServableData
from pyserving.errors import NotFound
from pyserving.sources.filesystem import (
    INCOMPLETE_SETTLE_POLLS,
    SAVED_MODEL_MARKERS,
    FileSystemStoragePathSource,
    ServableSourceConfig,
    ServableVersionPolicy,
    listing_fingerprint,
    version_listing,
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.fingerprints: dict[int, str | None] = {}
        self.items: dict[int, ServableData[str]] = {}
        #: every (version, fingerprint) ever emitted with a path, i.e. handed over to load
        self.handed_over: list[tuple[int, str | None]] = []

    def __call__(self, name: str, versions: Sequence[ServableData[str]]) -> None:
        self.calls.append((name, [d.id.version for d in versions]))
        self.fingerprints = {d.id.version: d.fingerprint for d in versions}
        self.items = {d.id.version: d for d in versions}
        self.handed_over.extend((d.id.version, d.fingerprint) for d in versions if d.ok)

    @property
    def last(self) -> list[int]:
        return self.calls[-1][1]

    @property
    def loadable(self) -> list[int]:
        """The versions of the last call emitted with their paths (not as errors)."""
        return [v for v, d in self.items.items() if d.ok]


def make_source(
    base: pathlib.Path,
    policy: ServableVersionPolicy | None = None,
    *,
    require_stable: bool = True,
    markers: tuple[str, ...] = SAVED_MODEL_MARKERS,
) -> tuple[FileSystemStoragePathSource, Recorder]:
    config = ServableSourceConfig(
        "m", str(base), policy or ServableVersionPolicy.latest(), complete_markers=markers
    )
    source = FileSystemStoragePathSource([config], -1, require_stable=require_stable)
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    return source, recorder


def write_version(base: pathlib.Path, version: int, *, complete: bool = True) -> pathlib.Path:
    path = base / str(version)
    (path / "variables").mkdir(parents=True)
    (path / "variables" / "variables.index").write_bytes(b"index")
    if complete:
        (path / "saved_model.pb").write_bytes(b"graph")
    return path


def test_first_poll_accepts_complete_versions_at_once(tmp_path: pathlib.Path) -> None:
    write_version(tmp_path, 1)
    write_version(tmp_path, 2)
    source, recorder = make_source(tmp_path, ServableVersionPolicy.all())
    source.poll_once()
    assert recorder.last == [1, 2]


def test_new_version_is_aspired_only_once_unchanged_between_two_polls(
    tmp_path: pathlib.Path,
) -> None:
    write_version(tmp_path, 1)
    source, recorder = make_source(tmp_path)
    source.poll_once()
    assert recorder.last == [1]
    write_version(tmp_path, 2)
    source.poll_once()  # first sighting: recorded only, 1 stays aspired
    assert recorder.last == [1]
    source.poll_once()  # unchanged since: accepted
    assert recorder.last == [2]


def test_version_still_being_written_is_not_aspired(tmp_path: pathlib.Path) -> None:
    """Each poll sees a different listing (a file growing, a file added, an mtime moving):
    the version waits until two consecutive polls agree."""
    write_version(tmp_path, 1)
    source, recorder = make_source(tmp_path)
    source.poll_once()
    path = write_version(tmp_path, 2)
    data = path / "variables" / "variables.data-00000-of-00001"
    changes = [
        lambda: data.write_bytes(b"x" * 10),
        lambda: data.write_bytes(b"x" * 20),
        lambda: (path / "assets").mkdir(),
        lambda: os.utime(data, ns=(1, 1)),
        lambda: (path / "assets" / "vocab.txt").write_text("a"),
    ]
    for change in changes:
        change()
        source.poll_once()
        assert recorder.last == [1]
    source.poll_once()
    assert recorder.last == [2]


def test_complete_marker_is_required(tmp_path: pathlib.Path) -> None:
    write_version(tmp_path, 1)
    source, recorder = make_source(tmp_path)
    source.poll_once()
    path = write_version(tmp_path, 2, complete=False)
    source.poll_once()
    source.poll_once()  # unchanged, but no saved_model.pb yet
    assert recorder.last == [1]
    (path / "saved_model.pbtxt").write_text("meta_graphs {}")
    source.poll_once()  # complete now, but just changed
    assert recorder.last == [1]
    source.poll_once()
    assert recorder.last == [2]


def test_version_that_stays_incomplete_is_reported_as_an_error_never_loaded(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory that never becomes a SavedModel is emitted as NotFound error data (so model
    status shows it) once it has not changed for INCOMPLETE_SETTLE_POLLS polls; its path is
    never handed over, so no load is attempted."""
    path = write_version(tmp_path, 1, complete=False)
    source, recorder = make_source(tmp_path)
    with caplog.at_level(logging.WARNING):
        for _ in range(INCOMPLETE_SETTLE_POLLS):
            source.poll_once()
            assert recorder.last == []
        for _ in range(5):
            source.poll_once()
            assert recorder.last == [1]
    error = recorder.items[1].error
    assert isinstance(error, NotFound)
    assert error.message.startswith(  # TF Serving's message, then pyserving's reason
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path} "
    )
    assert "once one of saved_model.pb/saved_model.pbtxt is present" in error.message
    assert recorder.fingerprints[1] == listing_fingerprint(version_listing(str(path)))
    assert recorder.handed_over == []
    warnings = [r for r in caplog.records if "has none of saved_model.pb" in r.message]
    assert len(warnings) == 1  # once per listing, not once per poll


def test_slow_copy_variables_first_is_handed_over_only_when_complete(
    tmp_path: pathlib.Path,
) -> None:
    """The slow copy of the issue, one poll per second: variables at t=0, saved_model.pb at
    t=3.5. The version is never handed over without saved_model.pb; meanwhile it is reported
    as an error beside version 1, which stays aspired; it is handed over at the second poll
    after saved_model.pb arrived, with the fingerprint of the complete listing."""
    write_version(tmp_path, 1)
    source, recorder = make_source(tmp_path)
    source.poll_once()
    path = write_version(tmp_path, 2, complete=False)  # t = 0: variables only
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    for _ in range(4):  # polls at t = 0.2, 1.2, 2.2, 3.2
        source.poll_once()
        assert recorder.loadable == [1]
    assert recorder.last == [1, 2] and not recorder.items[2].ok  # reported, not loadable
    incomplete = recorder.fingerprints[2]
    (path / "saved_model.pb").write_bytes(b"graph")  # t = 3.5
    source.poll_once()  # t = 4.2: changed since the last poll; reported as before
    assert recorder.loadable == [1]
    assert recorder.fingerprints[2] == incomplete
    source.poll_once()  # t = 5.2: complete and unchanged: handed over
    assert recorder.last == [2] and recorder.loadable == [2]
    assert recorder.fingerprints[2] == listing_fingerprint(version_listing(str(path)))
    assert [v for v, _ in recorder.handed_over].count(2) == 1
    assert (2, incomplete) not in recorder.handed_over


@pytest.mark.parametrize("policy", ["latest2", "all", "specific"])
def test_incomplete_versions_are_reported_under_every_policy_and_displace_nothing(
    tmp_path: pathlib.Path, policy: str
) -> None:
    policies = {
        "latest2": ServableVersionPolicy.latest(2),
        "all": ServableVersionPolicy.all(),
        "specific": ServableVersionPolicy.specific([1, 2, 3]),
    }
    write_version(tmp_path, 1)
    write_version(tmp_path, 2)
    source, recorder = make_source(tmp_path, policies[policy])
    source.poll_once()
    write_version(tmp_path, 3, complete=False)
    for _ in range(INCOMPLETE_SETTLE_POLLS + 1):
        source.poll_once()
    assert recorder.last == [1, 2, 3]
    assert recorder.loadable == [1, 2]
    assert isinstance(recorder.items[3].error, NotFound)


def test_only_the_incomplete_versions_the_policy_would_pick_are_reported(
    tmp_path: pathlib.Path,
) -> None:
    write_version(tmp_path, 1)
    source, recorder = make_source(tmp_path)
    source.poll_once()
    write_version(tmp_path, 2, complete=False)
    write_version(tmp_path, 3, complete=False)
    for _ in range(INCOMPLETE_SETTLE_POLLS + 1):
        source.poll_once()
    assert recorder.last == [1, 3] and recorder.loadable == [1]


def test_accepted_version_losing_its_marker_keeps_its_fingerprint_until_complete_again(
    tmp_path: pathlib.Path,
) -> None:
    """A version re-copied in place (saved_model.pb removed first) is not handed over again
    until the marker is back and the listing settled."""
    path = write_version(tmp_path, 1)
    source, recorder = make_source(tmp_path)
    source.poll_once()
    original = recorder.fingerprints[1]
    (path / "saved_model.pb").unlink()
    for _ in range(INCOMPLETE_SETTLE_POLLS + 3):
        source.poll_once()
        assert recorder.loadable == [1] and recorder.fingerprints[1] == original
    (path / "saved_model.pb").write_bytes(b"another graph")
    source.poll_once()
    assert recorder.fingerprints[1] == original
    source.poll_once()
    assert recorder.fingerprints[1] == listing_fingerprint(version_listing(str(path)))
    assert recorder.fingerprints[1] != original


@pytest.mark.parametrize(
    ("markers", "head"),
    [
        (("model.tflite",), "Could not find any of model.tflite at version directory path"),
        (
            (*SAVED_MODEL_MARKERS, "model.tflite"),
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path",
        ),
    ],
)
def test_incomplete_error_names_the_markers(
    tmp_path: pathlib.Path, markers: tuple[str, ...], head: str
) -> None:
    (tmp_path / "1").mkdir()
    source, recorder = make_source(tmp_path, markers=markers)
    for _ in range(INCOMPLETE_SETTLE_POLLS + 1):
        source.poll_once()
    error = recorder.items[1].error
    assert isinstance(error, NotFound)
    assert error.message.startswith(f"{head}: {tmp_path / '1'} ")
    assert f"once one of {'/'.join(markers)} is present" in error.message


def test_without_markers_every_directory_is_complete(tmp_path: pathlib.Path) -> None:
    (tmp_path / "1").mkdir()
    source, recorder = make_source(tmp_path, markers=())
    source.poll_once()
    assert recorder.last == [1]


def test_latest_keeps_previous_while_newest_is_written(tmp_path: pathlib.Path) -> None:
    write_version(tmp_path, 1)
    write_version(tmp_path, 2)
    source, recorder = make_source(tmp_path, ServableVersionPolicy.latest(2))
    source.poll_once()
    assert recorder.last == [1, 2]
    path = write_version(tmp_path, 3, complete=False)
    source.poll_once()
    assert recorder.last == [1, 2]
    (path / "saved_model.pb").write_bytes(b"graph")
    source.poll_once()
    assert recorder.last == [1, 2]
    source.poll_once()
    assert recorder.last == [2, 3]


def test_changed_content_is_emitted_with_a_new_fingerprint_once_settled(
    tmp_path: pathlib.Path,
) -> None:
    path = write_version(tmp_path, 1)
    source, recorder = make_source(tmp_path)
    source.poll_once()
    original = recorder.fingerprints[1]
    assert original == listing_fingerprint(version_listing(str(path)))
    (path / "saved_model.pb").write_bytes(b"a fixed graph")
    source.poll_once()  # changing: still aspired, with the content it was accepted with
    assert recorder.last == [1] and recorder.fingerprints[1] == original
    source.poll_once()
    assert recorder.last == [1] and recorder.fingerprints[1] != original
    assert recorder.fingerprints[1] == listing_fingerprint(version_listing(str(path)))


def test_without_stability_versions_are_taken_as_found(tmp_path: pathlib.Path) -> None:
    """Poll-once and explicit polls (poll_wait_seconds <= 0): no second look to wait for."""
    (tmp_path / "1").mkdir()
    source, recorder = make_source(tmp_path, require_stable=False)
    source.poll_once()
    assert recorder.last == [1]
    path = write_version(tmp_path, 2, complete=False)
    source.poll_once()
    assert recorder.last == [2]
    before = recorder.fingerprints[2]
    (path / "saved_model.pb").write_bytes(b"graph")
    source.poll_once()
    assert recorder.fingerprints[2] != before


@pytest.mark.parametrize(("wait", "stable"), [(1.0, True), (0.5, True), (0, False), (-1, False)])
def test_stability_is_required_when_polling_periodically(
    tmp_path: pathlib.Path, wait: float, stable: bool
) -> None:
    (tmp_path / "1").mkdir()
    source = FileSystemStoragePathSource([ServableSourceConfig("m", str(tmp_path))], wait)
    recorder = Recorder()
    source.set_aspired_versions_callback(recorder)
    source.poll_once()
    (tmp_path / "2").mkdir()
    source.poll_once()
    assert recorder.last == ([1] if stable else [2])
    source.close()


def test_first_poll_again_after_base_path_changes(tmp_path: pathlib.Path) -> None:
    write_version(tmp_path / "a", 1)
    write_version(tmp_path / "b", 5)
    source, recorder = make_source(tmp_path / "a")
    source.poll_once()
    assert recorder.last == [1]
    moved = ServableSourceConfig("m", str(tmp_path / "b"), complete_markers=SAVED_MODEL_MARKERS)
    source.update_config([moved])
    source.poll_once()
    assert recorder.last == [5]


def test_base_path_created_after_the_first_poll_is_checked_for_stability(
    tmp_path: pathlib.Path,
) -> None:
    base = tmp_path / "later"
    source, recorder = make_source(base)
    source.poll_once()  # the base path does not exist yet: nothing emitted
    assert recorder.calls == []
    write_version(base, 1)
    source.poll_once()  # not the first poll any more: version 1 waits one poll
    assert recorder.last == []
    source.poll_once()
    assert recorder.last == [1]


def test_listing_records_names_sizes_and_mtimes(tmp_path: pathlib.Path) -> None:
    path = write_version(tmp_path, 1)
    os.utime(path / "saved_model.pb", ns=(5, 7))
    (path / "link").symlink_to(path / "variables")
    listing = dict((name, (size, mtime)) for name, size, mtime in version_listing(str(path)))
    assert listing["saved_model.pb"] == (5, 7)
    assert listing["variables/"][0] == -1
    assert listing["variables/variables.index"][0] == 5
    assert "link@/" in listing  # a link to a directory is listed, not followed
    assert not any(name.startswith("link/") for name in listing)
    assert version_listing(str(tmp_path / "missing"))[0][1] == -2
