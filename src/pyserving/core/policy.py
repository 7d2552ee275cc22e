"""Aspired-version policies: pure functions from a model's version states to one next action.

The manager asks the policy of each servable name for at most one action per round, and only
while none of that name's versions is in a transitional state. Policies are pure and are
tested as tables.

* ``availability_preserving`` — load the new version first; unload an un-aspired version only
  once an aspired version is ready (or none is aspired at all). Requests never go unanswered
  during an update, at the cost of holding two versions for a while.
* ``resource_preserving`` — unload un-aspired versions first, load only once they are gone.
  Memory never holds two versions of a model, at the cost of a short unavailability window.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class HarnessState(enum.Enum):
    """A version's place in its lifecycle (TF Serving's LoaderHarness::State)."""

    NEW = "new"
    LOAD_REQUESTED = "load_requested"
    LOADING = "loading"
    READY = "ready"
    QUIESCING = "quiescing"
    UNLOADING = "unloading"
    DISABLED = "disabled"
    ERROR = "error"

    @property
    def transitional(self) -> bool:
        return self in _TRANSITIONAL

    @property
    def finished(self) -> bool:
        return self in (HarnessState.DISABLED, HarnessState.ERROR)


_TRANSITIONAL = frozenset(
    {
        HarnessState.LOAD_REQUESTED,
        HarnessState.LOADING,
        HarnessState.QUIESCING,
        HarnessState.UNLOADING,
    }
)


@dataclass(frozen=True)
class VersionSnapshot:
    """What a policy sees of one version."""

    version: int
    state: HarnessState
    is_aspired: bool


class ActionKind(enum.Enum):
    LOAD = "load"
    UNLOAD = "unload"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    version: int


Policy = Callable[[Sequence[VersionSnapshot]], Action | None]


def availability_preserving(versions: Sequence[VersionSnapshot]) -> Action | None:
    """Load new versions before unloading old ones (TF Serving's AvailabilityPreservingPolicy)."""
    has_aspired = any(v.is_aspired for v in versions)
    has_aspired_ready = any(v.is_aspired and v.state is HarnessState.READY for v in versions)
    unaspired_ready = [v for v in versions if not v.is_aspired and v.state is HarnessState.READY]
    if unaspired_ready and (not has_aspired or has_aspired_ready or len(unaspired_ready) > 1):
        return Action(ActionKind.UNLOAD, min(v.version for v in unaspired_ready))
    new = [v.version for v in versions if v.is_aspired and v.state is HarnessState.NEW]
    if new:
        return Action(ActionKind.LOAD, max(new))
    return None


def resource_preserving(versions: Sequence[VersionSnapshot]) -> Action | None:
    """Unload un-aspired versions before loading new ones (TF Serving's ResourcePreserving)."""
    for v in versions:
        if not v.is_aspired and v.state is HarnessState.READY:
            return Action(ActionKind.UNLOAD, v.version)
    if any(not v.is_aspired and not v.state.finished for v in versions):
        return None
    new = [v.version for v in versions if v.is_aspired and v.state is HarnessState.NEW]
    if new:
        return Action(ActionKind.LOAD, max(new))
    return None


POLICIES: dict[str, Policy] = {
    "availability_preserving": availability_preserving,
    "resource_preserving": resource_preserving,
}


def policy_by_name(name: str) -> Policy:
    """``availability_preserving`` or ``resource_preserving``; ``ValueError`` otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown version policy {name!r}; expected one of {sorted(POLICIES)}"
        ) from None
