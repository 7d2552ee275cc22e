"""Shared fixtures: where the real TF Serving test models live."""

from __future__ import annotations

import os
import pathlib

import pytest

TESTDATA = pathlib.Path(
    os.environ.get(
        "PYSERVING_TESTDATA",
        pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "tfserving",
    )
)


@pytest.fixture(scope="session")
def testdata() -> pathlib.Path:
    if not TESTDATA.is_dir():
        pytest.fail(f"TF Serving test data not found at {TESTDATA} (set PYSERVING_TESTDATA)")
    return TESTDATA
