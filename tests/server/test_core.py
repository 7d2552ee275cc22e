"""ServerCore with FakeLoaders behind the real source and manager: reloads, labels, status."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from pyserving.config import ConfigError, ModelServerConfig, parse_text_proto
from pyserving.core.manager import ManagerOptions
from pyserving.core.monitor import ManagerState
from pyserving.core.source import ServableId
from pyserving.errors import FailedPrecondition, InvalidArgument, NotFound
from pyserving.server.core import ServerCore, ServerCoreOptions
from tests.core.fakes import FakeLoader, LoadLog


def make_config(text: str) -> ModelServerConfig:
    config = ModelServerConfig()
    parse_text_proto(text, config, "tensorflow.serving.ModelServerConfig")
    return config


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> pathlib.Path:
    for name, versions in {"a": [1, 2], "b": [7], "c": [3]}.items():
        for v in versions:
            (tmp_path / name / str(v)).mkdir(parents=True)
    return tmp_path


@pytest.fixture
def log() -> LoadLog:
    return LoadLog()


@pytest.fixture
def core(log: LoadLog) -> Iterator[ServerCore]:
    def factory(model: object, id: ServableId, path: str) -> FakeLoader:
        if pathlib.Path(path, "BROKEN").exists():
            return FakeLoader(id.name, id.version, fail_times=100, log=log)
        return FakeLoader(id.name, id.version, log=log)

    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=2, num_unload_threads=1, max_num_load_retries=0),
        file_system_poll_wait_seconds=0,
        platforms={"tensorflow": factory},
        settle_timeout=30,
    )
    with ServerCore(options) as c:
        yield c


def models(repo: pathlib.Path, *names: str, extra: str = "") -> ModelServerConfig:
    body = "".join(
        f'config {{ name: "{n}" base_path: "{repo / n}" {extra if n == "a" else ""} }}'
        for n in names
    )
    return make_config(f"model_config_list {{ {body} }}")


def test_reload_adds_and_removes_models(core: ServerCore, repo: pathlib.Path, log: LoadLog) -> None:
    core.reload_config(models(repo, "a", "b"))
    assert core.manager.available_versions("a") == [2]
    assert core.manager.available_versions("b") == [7]
    core.reload_config(models(repo, "a", "c"))
    assert core.manager.available_versions("b") == []
    assert core.manager.available_versions("c") == [3]
    assert ("unload", "b", 7) in log.events
    assert core.model_names() == ["a", "c"]


def test_file_url_base_path_is_the_local_directory(core: ServerCore, repo: pathlib.Path) -> None:
    """``file:///dir`` (as ``--model_base_path`` or a config's ``base_path``) reads ``/dir``."""
    url = f"file://{repo / 'a'}"
    config = f'model_config_list {{ config {{ name: "a" base_path: "{url}" }} }}'
    core.reload_config(make_config(config))
    assert core.manager.available_versions("a") == [2]
    assert core.model_names() == ["a"]


def test_version_policy_all_and_labels(core: ServerCore, repo: pathlib.Path) -> None:
    extra = (
        "model_version_policy { all {} } "
        'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'
    )
    core.reload_config(models(repo, "a", extra=extra))
    assert core.manager.available_versions("a") == [1, 2]
    with core.handle("a", label="stable") as h:
        assert h.id.version == 1
    with core.handle("a", label="canary") as h:
        assert h.id.version == 2
    with pytest.raises(InvalidArgument, match="Unrecognized servable version label: beta"):
        core.handle("a", label="beta")


def test_label_on_unavailable_version_is_refused(core: ServerCore, repo: pathlib.Path) -> None:
    with pytest.raises(FailedPrecondition, match="version 9 of model a"):
        core.reload_config(models(repo, "a", extra='version_labels { key: "x" value: 9 }'))


def test_label_on_unavailable_version_allowed_by_flag(log: LoadLog, repo: pathlib.Path) -> None:
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1),
        file_system_poll_wait_seconds=0,
        platforms={"tensorflow": lambda m, id, p: FakeLoader(id.name, id.version, log=log)},
        allow_version_labels_for_unavailable_models=True,
        settle_timeout=30,
    )
    with ServerCore(options) as core:
        core.reload_config(models(repo, "a", extra='version_labels { key: "x" value: 9 }'))
        with pytest.raises(NotFound, match=r"Specific\(a, 9\)"):
            core.handle("a", label="x")


def test_model_status(core: ServerCore, repo: pathlib.Path) -> None:
    (repo / "b" / "7" / "BROKEN").touch()
    core.reload_config(models(repo, "a", "b"))
    [state] = core.model_status("a")
    assert state.id == ServableId("a", 2) and state.state is ManagerState.AVAILABLE
    [broken] = core.model_status("b")
    assert broken.state is ManagerState.END and broken.error is not None
    with pytest.raises(NotFound, match="Could not find any versions of model zzz"):
        core.model_status("zzz")
    with pytest.raises(NotFound, match="Could not find version 5 of model a"):
        core.model_status("a", version=5)
    with pytest.raises(NotFound, match=r"Could not find any versions of model $"):
        core.model_status("")


def test_invalid_config_leaves_model_set_untouched(core: ServerCore, repo: pathlib.Path) -> None:
    core.reload_config(models(repo, "a"))
    bad = make_config(
        f'model_config_list {{ config {{ name: "a" base_path: "{repo / "a"}" }} '
        f'config {{ name: "a" base_path: "{repo / "b"}" }} }}'
    )
    with pytest.raises(ConfigError, match="multiple times"):
        core.reload_config(bad)
    assert core.model_names() == ["a"]
    assert core.manager.available_versions("a") == [2]


def test_empty_model_name_is_invalid(core: ServerCore) -> None:
    with pytest.raises(InvalidArgument):
        core.handle("")


def test_policy_per_model(log: LoadLog, repo: pathlib.Path) -> None:
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1, num_unload_threads=1),
        file_system_poll_wait_seconds=0,
        platforms={"tensorflow": lambda m, id, p: FakeLoader(id.name, id.version, log=log)},
        policy_per_model={"a": "resource_preserving"},
        settle_timeout=30,
    )
    with ServerCore(options) as core:
        config = models(repo, "a", "c")
        core.reload_config(config)
        (repo / "a" / "3").mkdir()
        (repo / "c" / "4").mkdir()
        log.events.clear()
        core.reload_config(config)  # polls again: a 2 -> 3, c 3 -> 4
        core.manager.settle()
        a_events = [e for e in log.events if e[1] == "a"]
        c_events = [e for e in log.events if e[1] == "c"]
        assert a_events == [("unload", "a", 2), ("load", "a", 3)]
        assert c_events == [("load", "c", 4), ("unload", "c", 3)]
