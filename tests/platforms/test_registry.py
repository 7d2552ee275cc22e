"""The platform registry reads the installed entry points once, and again for a name it lacks."""

from __future__ import annotations

import pathlib
import sys
import types
from dataclasses import dataclass

import pytest

from pyserving.core.loader import Loader
from pyserving.errors import NotFound
from pyserving.platforms import registry
from pyserving.platforms.registry import Platform, PlatformOptions


class CsvPlatform(Platform):
    """A stand-in third-party platform (never loads anything)."""

    name = "csv"
    markers = ("model.csv",)

    def loader(self, path: str, options: PlatformOptions) -> Loader:
        raise NotImplementedError


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str


class InstalledPackages:
    """``importlib.metadata.entry_points`` over a list the test changes, counting reads."""

    def __init__(self) -> None:
        self.entry_points: list[EntryPoint] = []
        self.reads = 0

    def __call__(self, *, group: str) -> list[EntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        self.reads += 1
        return list(self.entry_points)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> InstalledPackages:
    packages = InstalledPackages()
    monkeypatch.setattr(registry, "entry_points", packages)
    monkeypatch.setattr(registry, "_targets", None)
    monkeypatch.setattr(registry, "_cache", dict(registry._cache))
    return packages


def test_polls_do_not_read_the_entry_points_again(
    installed: InstalledPackages, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    options = PlatformOptions()
    for _ in range(5):  # what each poll of a model's directory does
        assert registry.detect_platform(str(tmp_path), options).name == "onnx"
        registry.all_markers(options)
    assert installed.reads == 1


def test_a_platform_installed_later_is_found_by_name(
    installed: InstalledPackages, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "csv" not in registry.platform_names()
    with pytest.raises(NotFound, match="No model platform 'csv' is installed"):
        registry.get_platform("csv")
    # `pip install` of a plugin: its entry point appears; a model naming it finds it.
    module = types.ModuleType("csv_platform_plugin")
    module.CsvPlatform = CsvPlatform  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "csv_platform_plugin", module)
    installed.entry_points.append(EntryPoint("csv", "csv_platform_plugin:CsvPlatform"))
    reads = installed.reads
    assert registry.get_platform("csv").name == "csv"
    assert installed.reads == reads + 1
    # From then on detection by files sees it too, without reading the entry points again.
    (tmp_path / "model.csv").write_text("1,2\n")
    assert registry.detect_platform(str(tmp_path), PlatformOptions()).name == "csv"
    assert installed.reads == reads + 1
