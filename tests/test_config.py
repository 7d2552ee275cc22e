"""ModelServerConfig parsing and validation with TF Serving's messages."""

from __future__ import annotations

import pathlib

import pytest

from pyserving.config import (
    ConfigError,
    load_model_server_config,
    parse_text_proto,
    validate_model_server_config,
)
from pyserving.config import ModelServerConfig as Config


def config(text: str) -> Config:
    message = Config()
    parse_text_proto(text, message, "tensorflow.serving.ModelServerConfig")
    return message


def test_good_config_from_tf_serving(testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    text = (testdata / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", "/models/a").replace(
        "${TEST_HALF_PLUS_THREE_DIR}", "/models/b"
    )
    path = tmp_path / "good.config"
    path.write_text(text)
    parsed = load_model_server_config(str(path))
    assert [m.name for m in parsed.model_config_list.config] == ["half_plus_two", "half_plus_three"]


def test_bad_config_from_tf_serving(testdata: pathlib.Path) -> None:
    with pytest.raises(
        ConfigError, match=r"Error parsing text-format tensorflow\.serving\.ModelServerConfig"
    ):
        load_model_server_config(str(testdata / "bad_model_config.txt"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_model_server_config("/no/such/file.config")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'model_config_list { config { name: "a" base_path: "/x" } '
            'config { name: "a" base_path: "/y" } }',
            "Illegal to list model a multiple times in config list",
        ),
        (
            'model_config_list { config { name: "a" base_path: "relative/x" } }',
            "Expected model a to have an absolute path or URI; got base_path()=relative/x",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" model_platform: "caffe" } }',
            "model_platform 'caffe'",
        ),
        ('model_config_list { config { base_path: "/x" } }', "needs a name"),
    ],
)
def test_validation(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_model_server_config(config(text))
    assert message in info.value.message


def test_typo_in_field_name_is_a_parse_error() -> None:
    with pytest.raises(ConfigError, match="Error parsing text-format"):
        config('model_config_list { config { nmae: "a" } }')
