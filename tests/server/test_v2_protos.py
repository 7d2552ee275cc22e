"""The V2 gRPC messages: the committed descriptor is what inference.proto compiles to, and
every message and field matches Triton's grpc_service.proto as tritonclient ships it."""

from __future__ import annotations

import pytest

from pyserving.server.v2 import inference_descriptor, protos


def test_descriptor_matches_the_proto() -> None:
    pytest.importorskip("grpc_tools")
    assert protos.compile_proto() == inference_descriptor.SERIALIZED, (
        "inference_descriptor.py is stale: run python -m pyserving.server.v2.protos"
    )


def test_messages_match_tritons() -> None:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    pool = service_pb2.DESCRIPTOR.pool
    for name, message in protos.MESSAGES.items():
        theirs = pool.FindMessageTypeByName(f"inference.{name}")
        for field in message.DESCRIPTOR.fields:
            other = theirs.fields_by_number[field.number]
            assert (other.name, other.type, other.is_repeated) == (
                field.name,
                field.type,
                field.is_repeated,
            ), f"{name}.{field.name}"
    service = pool.FindServiceByName("inference.GRPCInferenceService")
    for method, (request, response) in protos.METHODS.items():
        theirs = service.FindMethodByName(method)
        assert theirs.input_type.full_name == request.DESCRIPTOR.full_name
        assert theirs.output_type.full_name == response.DESCRIPTOR.full_name


def test_private_pool_coexists_with_clients() -> None:
    """Both pyserving's messages and tritonclient's are usable in one process."""
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours = protos.MESSAGES["ModelInferRequest"](model_name="m", raw_input_contents=[b"x"])
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "m" and list(theirs.raw_input_contents) == [b"x"]
