"""Shared fixtures: the test models.

Two sources, laid out alike (TF Serving's directory names and version numbers):

- ``testdata``: equivalents of TF Serving's test models exported with the installed
  TensorFlow (:mod:`pyserving.testing.models`), built once per run. Every test can use it.
- ``tfserving_testdata``: TF Serving's own test models
  (``tensorflow_serving/servables/tensorflow/testdata``, exported by TF 1.0 to 2.14) at
  ``$PYSERVING_TESTDATA``, else ``../shared/testdata/tfserving`` beside this checkout. Tests
  using it are skipped, with the reason in the summary, when it is absent. They cover what
  only those files can: compatibility with exports made by old TF versions and TF Serving's
  recorded answers (the metadata JSON files).

``each_testdata`` runs a test once on each source.
"""

from __future__ import annotations

import os
import pathlib

import pytest

#: Where TF Serving's own test models are looked for.
TFSERVING_TESTDATA = pathlib.Path(
    os.environ.get(
        "PYSERVING_TESTDATA",
        pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "tfserving",
    )
)


@pytest.fixture(scope="session")
def testdata(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The generated test models (read-only by convention: copy a model to change it)."""
    from pyserving.testing.models import build_testdata

    return build_testdata(tmp_path_factory.mktemp("testdata"))


@pytest.fixture(scope="session")
def tfserving_testdata() -> pathlib.Path:
    """TF Serving's own test models (read-only), or the test is skipped."""
    marker = TFSERVING_TESTDATA / "saved_model_half_plus_two_cpu"
    if not marker.is_dir():
        pytest.skip(
            f"TF Serving test models not found at {TFSERVING_TESTDATA}: set PYSERVING_TESTDATA "
            "to a copy of tensorflow_serving/servables/tensorflow/testdata"
        )
    return TFSERVING_TESTDATA


@pytest.fixture(scope="session", params=["generated", "tfserving"])
def each_testdata(request: pytest.FixtureRequest) -> pathlib.Path:
    """``testdata``, then ``tfserving_testdata``: the test runs on both sources."""
    name = "testdata" if request.param == "generated" else "tfserving_testdata"
    path: pathlib.Path = request.getfixturevalue(name)
    return path
