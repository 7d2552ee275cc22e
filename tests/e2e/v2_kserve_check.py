"""KServe's V2 clients against a running pyserving (run by tests/e2e/test_v2.py).

``python tests/e2e/v2_kserve_check.py REST_URL GRPC_ADDRESS``: exits 0 when every check
passes, 77 when ``kserve`` is not installed, 1 with the failure otherwise. It runs in a
process of its own because ``kserve`` and ``tritonclient.grpc`` each register their own
``inference.*`` protobuf messages in protobuf's default pool, and the second to load fails.

The server serves ``half_plus_two`` (x -> 0.5 x + 2, FP32 [-1, 1]) and ``flowers``.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np


async def check(rest_url: str, grpc_address: str) -> None:
    import grpc
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest
    from kserve.inference_client import RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    x = np.array([[1.0], [2.0], [6.0]], dtype=np.float32)
    expected = x * 0.5 + 2

    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    try:
        assert await rest.is_server_live(rest_url) is True
        assert await rest.is_server_ready(rest_url) is True
        assert await rest.is_model_ready(rest_url, "half_plus_two") is True
        assert await rest.is_model_ready(rest_url, "no_such_model") is False

        # Binary tensor data in the request (set_data_from_numpy's default), JSON outputs.
        request_input = InferInput("x", list(x.shape), "FP32")
        request_input.set_data_from_numpy(x)
        request = InferRequest("half_plus_two", [request_input], request_id="kserve-1")
        response = await rest.infer(rest_url, request, model_name="half_plus_two")
        assert response.id == "kserve-1", response.id
        assert response.model_name == "half_plus_two"
        np.testing.assert_allclose(response.outputs[0].as_numpy(), expected)

        # JSON inputs, binary outputs.
        request_input = InferInput("x", list(x.shape), "FP32")
        request_input.set_data_from_numpy(x, binary_data=False)
        request = InferRequest(
            "half_plus_two", [request_input], parameters={"binary_data_output": True}
        )
        response = await rest.infer(rest_url, request, model_name="half_plus_two")
        np.testing.assert_allclose(response.outputs[0].as_numpy(), expected)

        # A requested output of the bundled example (three outputs).
        features = np.array([[5.0, 3.4, 1.5, 0.25], [6.6, 3.0, 5.6, 2.0]], dtype=np.float32)
        request_input = InferInput("features", [2, 4], "FP32")
        request_input.set_data_from_numpy(features)
        request = InferRequest(
            "flowers", [request_input], request_outputs=[RequestedOutput("class_ids")]
        )
        response = await rest.infer(rest_url, request, model_name="flowers")
        assert [o.name for o in response.outputs] == ["class_ids"]
        class_ids = response.outputs[0].as_numpy()
        assert class_ids.dtype == np.int64 and class_ids.shape == (2,), class_ids

        # A dict body, as a KServe inference graph would send it.
        body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [4.0]}]}
        response = await rest.infer(rest_url, body, model_name="half_plus_two")
        np.testing.assert_allclose(response.outputs[0].as_numpy(), [[4.0]])
    finally:
        await rest.close()

    client = InferenceGRPCClient(grpc_address, retries=0)
    try:
        assert await client.is_server_live() is True
        assert await client.is_server_ready() is True
        assert await client.is_model_ready("half_plus_two") is True
        request_input = InferInput("x", list(x.shape), "FP32")
        request_input.set_data_from_numpy(x)
        request = InferRequest("half_plus_two", [request_input], request_id="kserve-2")
        response = await client.infer(request)
        assert response.id == "kserve-2"
        np.testing.assert_allclose(response.outputs[0].as_numpy(), expected)
        # Typed contents in, typed contents out.
        request_input = InferInput("x", [3, 1], "FP32", data=[1.0, 2.0, 6.0])
        response = await client.infer(InferRequest("half_plus_two", [request_input]))
        np.testing.assert_allclose(response.outputs[0].as_numpy(), expected)
        try:
            await client.infer(InferRequest("no_such_model", [request_input]))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        else:
            raise AssertionError("an unknown model was answered")
    finally:
        await client.close()


def main() -> int:
    try:
        import kserve  # noqa: F401
    except ImportError as exc:
        print(f"kserve is not installed: {exc}")
        return 77
    asyncio.run(check(sys.argv[1], sys.argv[2]))
    print("kserve clients: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
