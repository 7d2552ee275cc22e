"""TLS end to end: the real command with ``--ssl_config_file`` (client certificates required)
and ``--rest_api_ssl_certfile``/``--rest_api_ssl_keyfile``, called over loopback."""

from __future__ import annotations

import json
import pathlib
import ssl

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.certs import CertificateAuthority, ssl_config_text
from tests.e2e.server import RunningServer

pytestmark = pytest.mark.e2e


def test_grpc_and_rest_over_tls(testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ca = CertificateAuthority()
    server_pair = ca.issue("localhost", server=True)
    client = ca.issue("client", server=False)
    (tmp_path / "ca.pem").write_bytes(ca.cert)
    (tmp_path / "server.key").write_bytes(server_pair.key)
    (tmp_path / "server.pem").write_bytes(server_pair.cert)
    (tmp_path / "ssl.config").write_text(ssl_config_text(server_pair, ca.cert, client_verify=True))
    srv = RunningServer(
        [
            "--model_name=half_plus_two",
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
            f"--ssl_config_file={tmp_path / 'ssl.config'}",
            f"--rest_api_ssl_certfile={tmp_path / 'server.pem'}",
            f"--rest_api_ssl_keyfile={tmp_path / 'server.key'}",
        ],
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[2.0]], np.float32)))
        credentials = grpc.ssl_channel_credentials(ca.cert, client.key, client.cert)
        with grpc.secure_channel(f"localhost:{srv.grpc_port}", credentials) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=30)
            assert tf.make_ndarray(response.outputs["y"]).tolist() == [[3.0]]
        no_cert = grpc.ssl_channel_credentials(ca.cert)
        with grpc.secure_channel(f"localhost:{srv.grpc_port}", no_cert) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=30)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]

        url = f"https://localhost:{srv.rest_port}/v1/models/half_plus_two:predict"
        body = json.dumps({"instances": [[2.0]]})
        trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(verify=trust, timeout=30) as https:
            r = https.post(url, content=body)
            assert (r.status_code, r.json()) == (200, {"predictions": [[3.0]]})
        with httpx.Client(timeout=30) as plain, pytest.raises(httpx.HTTPError):
            plain.post(url.replace("https://", "http://"), content=body)
        assert "(TLS)" in srv.log() and "(HTTPS)" in srv.log()
    finally:
        assert srv.stop() == 0, srv.log()


def test_rest_client_certificates_are_required_with_a_client_ca(
    testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    ca = CertificateAuthority()
    server_pair = ca.issue("localhost", server=True)
    client = ca.issue("client", server=False)
    stranger = CertificateAuthority("another CA").issue("client", server=False)
    for name, data in {
        "ca.pem": ca.cert,
        "server.key": server_pair.key,
        "server.pem": server_pair.cert,
        "client.key": client.key,
        "client.pem": client.cert,
        "stranger.key": stranger.key,
        "stranger.pem": stranger.cert,
    }.items():
        (tmp_path / name).write_bytes(data)
    srv = RunningServer(
        [
            "--model_name=half_plus_two",
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
            f"--rest_api_ssl_certfile={tmp_path / 'server.pem'}",
            f"--rest_api_ssl_keyfile={tmp_path / 'server.key'}",
            f"--rest_api_ssl_client_ca_file={tmp_path / 'ca.pem'}",
        ],
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        url = f"https://localhost:{srv.rest_port}/v1/models/half_plus_two:predict"
        body = json.dumps({"instances": [[2.0]]})

        def context(cert: str | None) -> ssl.SSLContext:
            trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            if cert is not None:
                trust.load_cert_chain(tmp_path / f"{cert}.pem", tmp_path / f"{cert}.key")
            return trust

        with httpx.Client(verify=context("client"), timeout=30) as https:
            r = https.post(url, content=body)
            assert (r.status_code, r.json()) == (200, {"predictions": [[3.0]]})
        for refused in (None, "stranger"):
            with (
                httpx.Client(verify=context(refused), timeout=30) as https,
                pytest.raises(httpx.HTTPError),
            ):
                https.post(url, content=body)
    finally:
        assert srv.stop() == 0, srv.log()
