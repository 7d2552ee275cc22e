"""Configuration files: ModelServerConfig (text proto), and their validation.

The message types are TF Serving's own (``tensorflow_serving.config.model_server_config_pb2``),
so every existing config file parses unchanged. A file that does not parse raises
``ConfigError`` whose message starts with
``Error parsing text-format tensorflow.serving.ModelServerConfig``.
"""

from __future__ import annotations

import os

from google.protobuf import text_format
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from pyserving.errors import InvalidArgument
from pyserving.platforms.registry import platform_names

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

#: Platforms pyserving can serve: the installed platform plugins (see ``platforms/registry.py``).
SUPPORTED_PLATFORMS = tuple(platform_names())


class ConfigError(InvalidArgument):
    """A configuration file is missing, malformed or inconsistent."""


def parse_text_proto(text: str, message: Message, what: str) -> Message:
    """Parse ``text`` into ``message``; ``ConfigError`` naming the message type on failure."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"Error parsing text-format {what}: {exc}") from None
    return message


def read_text_proto(path: str, message: Message, what: str) -> Message:
    """Read and parse a text-proto file (``ConfigError`` if unreadable or malformed)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Error parsing text-format {what}: cannot read {path}: {exc}") from None
    return parse_text_proto(text, message, what)


def load_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Read ``--model_config_file`` and validate it."""
    config = model_server_config_pb2.ModelServerConfig()
    read_text_proto(path, config, "tensorflow.serving.ModelServerConfig")
    validate_model_server_config(config)
    return config


def single_model_config(
    name: str, base_path: str, platform: str = "tensorflow"
) -> model_server_config_pb2.ModelServerConfig:
    """The config ``--model_name``/``--model_base_path``/``--model_platform`` stand for
    (``platform`` "" = detected from each version directory's files)."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = platform
    return config


def validate_model_server_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    """TF Serving's checks: a model list, unique names, absolute paths, known platforms.

    Raises ``ConfigError`` with TF Serving's wording.
    """
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("ModelServer does not yet support custom model config.")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError("Every model in the config list needs a name")
        if model.name in seen:
            raise ConfigError(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"Model {model.name} has no base_path")
        if not _is_absolute_or_uri(model.base_path):
            raise ConfigError(
                f"Expected model {model.name} to have an absolute path or URI; "
                f"got base_path()={model.base_path}"
            )
        platform = model.model_platform
        supported = platform_names()
        if platform and platform not in supported:
            raise ConfigError(
                f"Model {model.name} requests model_platform {platform!r}, which this server "
                f"does not support (supported: {', '.join(supported)})"
            )
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
            raise ConfigError(f"Model {model.name}: latest.num_versions must not be negative")


def _is_absolute_or_uri(path: str) -> bool:
    return os.path.isabs(path) or "://" in path
