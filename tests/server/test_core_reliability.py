"""ServerCore end to end with FakeLoaders: a broken version fixed in place loads on a later
poll, while the previous version serves throughout."""

from __future__ import annotations

import pathlib

from pyserving.config import ModelServerConfig, parse_text_proto
from pyserving.core.manager import ManagerOptions
from pyserving.core.monitor import ManagerState
from pyserving.core.source import ServableId
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.sources.filesystem import SAVED_MODEL_MARKERS
from tests.core.fakes import FakeLoader, LoadLog


def test_broken_version_fixed_in_place_loads_on_a_later_poll(tmp_path: pathlib.Path) -> None:
    log = LoadLog()

    def factory(model: object, id: ServableId, path: str) -> FakeLoader:
        broken = pathlib.Path(path, "BROKEN").exists()
        return FakeLoader(id.name, id.version, fail_times=100 if broken else 0, log=log)

    (tmp_path / "m" / "1").mkdir(parents=True)
    config = ModelServerConfig()
    parse_text_proto(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" }} }}',
        config,
        "tensorflow.serving.ModelServerConfig",
    )
    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1, max_num_load_retries=0),
        file_system_poll_wait_seconds=0,  # polls only at start-up and on each reload_config
        platforms={"tensorflow": factory},
        settle_timeout=30,
    )
    with ServerCore(options) as core:
        core.reload_config(config)
        (tmp_path / "m" / "2").mkdir()
        (tmp_path / "m" / "2" / "BROKEN").touch()
        core.reload_config(config)  # polls: 2 fails
        core.manager.settle()
        states = {s.id.version: s for s in core.model_status("m")}
        assert states[2].state is ManagerState.END and states[2].error is not None
        assert core.manager.available_versions("m") == [1]
        core.reload_config(config)  # polls again, nothing changed: no new attempt
        core.manager.settle()
        assert [e for e in log.events if e[0] == "load-failed"] == [("load-failed", "m", 2)]
        (tmp_path / "m" / "2" / "BROKEN").unlink()
        core.reload_config(config)  # the content changed: loaded again
        core.manager.settle()
        assert core.manager.available_versions("m") == [2]
        [state] = core.model_status("m", version=2)
        assert state.state is ManagerState.AVAILABLE and state.error is None


def test_tensorflow_models_need_a_saved_model_file() -> None:
    assert ServerCoreOptions().version_markers == {"tensorflow": SAVED_MODEL_MARKERS}
