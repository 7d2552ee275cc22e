"""The version policies as tables: (versions as (version, state, aspired)) -> expected action."""

from __future__ import annotations

import pytest

from pyserving.core.policy import (
    Action,
    ActionKind,
    HarnessState,
    VersionSnapshot,
    availability_preserving,
    policy_by_name,
    resource_preserving,
)

N, R, L, E, D, U = (
    HarnessState.NEW,
    HarnessState.READY,
    HarnessState.LOADING,
    HarnessState.ERROR,
    HarnessState.DISABLED,
    HarnessState.UNLOADING,
)


def load(v: int) -> Action:
    return Action(ActionKind.LOAD, v)


def unload(v: int) -> Action:
    return Action(ActionKind.UNLOAD, v)


def snaps(*rows: tuple[int, HarnessState, bool]) -> list[VersionSnapshot]:
    return [VersionSnapshot(v, s, a) for v, s, a in rows]


AVAILABILITY = [
    ("nothing", [], None),
    ("first version loads", [(1, N, True)], load(1)),
    ("highest new loads first", [(1, N, True), (2, N, True)], load(2)),
    ("new loads before old unloads", [(1, R, False), (2, N, True)], load(2)),
    ("old unloads once new ready", [(1, R, False), (2, R, True)], unload(1)),
    ("old kept while new failed", [(1, R, False), (2, E, True)], None),
    ("nothing aspired: unload", [(1, R, False)], unload(1)),
    ("two unaspired ready: lowest goes", [(1, R, False), (2, R, False), (3, N, True)], unload(1)),
    ("steady state", [(1, R, True)], None),
    ("finished versions ignored", [(1, D, False), (2, R, True)], None),
    ("loading blocks nothing here", [(1, R, True), (2, L, True)], None),
]

RESOURCE = [
    ("nothing", [], None),
    ("first version loads", [(1, N, True)], load(1)),
    ("unload before load", [(1, R, False), (2, N, True)], unload(1)),
    ("wait while old unloads", [(1, U, False), (2, N, True)], None),
    ("load once old is gone", [(1, D, False), (2, N, True)], load(2)),
    ("load after old failed", [(1, E, False), (2, N, True)], load(2)),
    ("highest new", [(2, N, True), (3, N, True)], load(3)),
    ("steady state", [(2, R, True)], None),
]


@pytest.mark.parametrize(
    ("case", "rows", "expected"), AVAILABILITY, ids=[c[0] for c in AVAILABILITY]
)
def test_availability_preserving(case: str, rows: list, expected: Action | None) -> None:
    assert availability_preserving(snaps(*rows)) == expected


@pytest.mark.parametrize(("case", "rows", "expected"), RESOURCE, ids=[c[0] for c in RESOURCE])
def test_resource_preserving(case: str, rows: list, expected: Action | None) -> None:
    assert resource_preserving(snaps(*rows)) == expected


def test_policy_by_name() -> None:
    assert policy_by_name("resource_preserving") is resource_preserving
    with pytest.raises(ValueError, match="unknown version policy"):
        policy_by_name("fastest")
