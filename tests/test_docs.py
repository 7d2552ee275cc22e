"""The user docs stay true to the code: every flag is documented."""

from __future__ import annotations

import pathlib

from pyserving.flags import FLAGS

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_every_flag_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f.name for f in FLAGS if f"`--{f.name}`" not in text]
    assert missing == []


def test_documented_status_matches_code() -> None:
    text = (DOCS / "configuration.md").read_text()
    for f in FLAGS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `--{f.name}` |"))
        assert row.endswith("| yes |") == f.implemented, row
