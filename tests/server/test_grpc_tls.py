"""gRPC over TLS (``--ssl_config_file``): the real gRPC front end on loopback, throw-away certs.

The model set is FakeLoaders behind the real ServerCore, so these tests only exercise the
transport: GetModelStatus answers once the handshake has passed.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from pyserving.config import ConfigError, ModelServerConfig, parse_text_proto
from pyserving.core.manager import ManagerOptions
from pyserving.core.source import ServableId
from pyserving.errors import InvalidArgument
from pyserving.flags import UsageError, parse_flags
from pyserving.server.app import server_options_from_flags
from pyserving.server.core import ServerCore, ServerCoreOptions
from pyserving.server.grpc import (
    GrpcServerOptions,
    GrpcTls,
    read_ssl_config_file,
    start_grpc_server,
)
from pyserving.server.service import ModelServing
from tests.certs import CertificateAuthority, KeyPair, ssl_config_text
from tests.core.fakes import FakeLoader

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture(scope="module")
def server_pair(ca: CertificateAuthority) -> KeyPair:
    return ca.issue("localhost", server=True)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerCore]:
    repo = tmp_path_factory.mktemp("tls")
    (repo / "m" / "1").mkdir(parents=True)
    config = ModelServerConfig()
    parse_text_proto(
        f'model_config_list {{ config {{ name: "m" base_path: "{repo / "m"}" }} }}',
        config,
        "tensorflow.serving.ModelServerConfig",
    )

    def factory(model: object, id: ServableId, path: str) -> FakeLoader:
        return FakeLoader(id.name, id.version)

    options = ServerCoreOptions(
        manager=ManagerOptions(num_load_threads=1),
        file_system_poll_wait_seconds=0,
        platforms={"tensorflow": factory},
        settle_timeout=30,
    )
    with ServerCore(options) as c:
        c.reload_config(config)
        yield c


@pytest.fixture(params=["http2", "grpcio"])
def flavour(request: pytest.FixtureRequest) -> str:
    """pyserving's HTTP/2 server (the default) or grpcio's grpc.aio."""
    return str(request.param)


def serve(core: ServerCore, tls: GrpcTls, socket_path: str = "", flavour: str = "http2") -> Any:
    return start_grpc_server(
        ModelServing(core),
        GrpcServerOptions(
            port=0,
            socket_path=socket_path,
            tls=tls,
            grpcio=flavour != "http2",
        ),
    )


def status(channel: grpc.Channel) -> list[int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "m"
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    response = stub.GetModelStatus(request, timeout=TIMEOUT)
    return [v.version for v in response.model_version_status]


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        status(channel)
    code: grpc.StatusCode = info.value.code()  # type: ignore[attr-defined]
    return code


def test_tls_server_answers_tls_clients_only(
    core: ServerCore,
    ca: CertificateAuthority,
    server_pair: KeyPair,
    tmp_path: pathlib.Path,
    flavour: str,
) -> None:
    socket = tmp_path / "grpc.sock"
    with serve(
        core, GrpcTls(server_pair.key.decode(), server_pair.cert.decode()), str(socket), flavour
    ) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert)
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
            assert status(channel) == [1]
        # The UNIX socket is TLS too, as in TF Serving (the name checked is "localhost").
        with grpc.secure_channel(
            f"unix:{socket}",
            credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as channel:
            assert status(channel) == [1]
        with grpc.insecure_channel(f"localhost:{server.port}") as channel:
            assert refused(channel) is grpc.StatusCode.UNAVAILABLE
        # A client that does not trust the server's CA refuses the server.
        other = grpc.ssl_channel_credentials(root_certificates=CertificateAuthority().cert)
        with grpc.secure_channel(f"localhost:{server.port}", other) as channel:
            assert refused(channel) is grpc.StatusCode.UNAVAILABLE


def test_client_verify_requires_a_certificate_from_custom_ca(
    core: ServerCore, ca: CertificateAuthority, server_pair: KeyPair, flavour: str
) -> None:
    tls = GrpcTls(
        server_pair.key.decode(), server_pair.cert.decode(), ca.cert.decode(), client_verify=True
    )
    client = ca.issue("client", server=False)
    stranger = CertificateAuthority("another CA").issue("client", server=False)
    with serve(core, tls, flavour=flavour) as server:
        target = f"localhost:{server.port}"
        good = grpc.ssl_channel_credentials(ca.cert, client.key, client.cert)
        with grpc.secure_channel(target, good) as channel:
            assert status(channel) == [1]
        without_cert = grpc.ssl_channel_credentials(ca.cert)
        with grpc.secure_channel(target, without_cert) as channel:
            assert refused(channel) is grpc.StatusCode.UNAVAILABLE
        wrong_ca = grpc.ssl_channel_credentials(ca.cert, stranger.key, stranger.cert)
        with grpc.secure_channel(target, wrong_ca) as channel:
            assert refused(channel) is grpc.StatusCode.UNAVAILABLE


def test_ssl_config_file_is_tf_servings_text_proto(
    ca: CertificateAuthority, server_pair: KeyPair, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "ssl.config"
    path.write_text(ssl_config_text(server_pair, ca.cert, client_verify=True))
    tls = read_ssl_config_file(str(path))
    assert tls == GrpcTls(
        server_pair.key.decode(), server_pair.cert.decode(), ca.cert.decode(), True
    )
    # The form people write by hand: PEM with escaped newlines, split over lines.
    key = server_pair.key.decode().replace("\n", "\\n")
    cert_lines = "\n".join(f'  "{line}\\n"' for line in server_pair.cert.decode().splitlines())
    path.write_text(f'server_key: "{key}"\nserver_cert:\n{cert_lines}\n')
    assert read_ssl_config_file(str(path)) == GrpcTls(
        server_pair.key.decode(), server_pair.cert.decode()
    )


def test_bad_ssl_config_files_stop_start_up(
    ca: CertificateAuthority, server_pair: KeyPair, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "ssl.config"
    path.write_text("server_kee: 'x'")
    with pytest.raises(
        ConfigError, match=r"Error parsing text-format tensorflow\.serving\.SSLConfig"
    ):
        read_ssl_config_file(str(path))
    path.write_text(ssl_config_text(server_pair, client_verify=True))
    with pytest.raises(InvalidArgument, match="client_verify needs custom_ca"):
        read_ssl_config_file(str(path))
    path.write_text('server_cert: "x"')
    with pytest.raises(InvalidArgument, match="needs both server_key and server_cert"):
        read_ssl_config_file(str(path))
    flags = parse_flags([f"--model_base_path={tmp_path}", f"--ssl_config_file={path}"])
    with pytest.raises(UsageError, match="--ssl_config_file="):
        server_options_from_flags(flags)


def test_rest_tls_flags_are_checked_at_start_up(
    server_pair: KeyPair, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "key.pem").write_bytes(server_pair.key)
    (tmp_path / "cert.pem").write_bytes(server_pair.cert)
    base = [f"--model_base_path={tmp_path}"]
    options = server_options_from_flags(
        parse_flags(
            [
                *base,
                f"--rest_api_ssl_certfile={tmp_path / 'cert.pem'}",
                f"--rest_api_ssl_keyfile={tmp_path / 'key.pem'}",
            ]
        )
    )
    assert options.rest_ssl_certfile == str(tmp_path / "cert.pem")
    with pytest.raises(UsageError, match="needs --rest_api_ssl_certfile"):
        server_options_from_flags(
            parse_flags([*base, f"--rest_api_ssl_keyfile={tmp_path / 'key.pem'}"])
        )
    with pytest.raises(UsageError, match="cannot load the certificate and key"):
        server_options_from_flags(
            parse_flags(
                [
                    *base,
                    f"--rest_api_ssl_certfile={tmp_path / 'key.pem'}",
                    f"--rest_api_ssl_keyfile={tmp_path / 'cert.pem'}",
                ]
            )
        )


def test_rest_client_ca_flag_is_checked_at_start_up(
    server_pair: KeyPair, ca: CertificateAuthority, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "key.pem").write_bytes(server_pair.key)
    (tmp_path / "cert.pem").write_bytes(server_pair.cert)
    (tmp_path / "ca.pem").write_bytes(ca.cert)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    tls = [
        f"--model_base_path={tmp_path}",
        f"--rest_api_ssl_certfile={tmp_path / 'cert.pem'}",
        f"--rest_api_ssl_keyfile={tmp_path / 'key.pem'}",
    ]
    options = server_options_from_flags(
        parse_flags([*tls, f"--rest_api_ssl_client_ca_file={tmp_path / 'ca.pem'}"])
    )
    assert options.rest_ssl_client_ca_file == str(tmp_path / "ca.pem")
    with pytest.raises(UsageError, match="rest_api_ssl_client_ca_file needs"):
        server_options_from_flags(
            parse_flags(
                [f"--model_base_path={tmp_path}", f"--rest_api_ssl_client_ca_file={tmp_path}"]
            )
        )
    with pytest.raises(UsageError, match="cannot load the CA certificates"):
        server_options_from_flags(
            parse_flags([*tls, f"--rest_api_ssl_client_ca_file={tmp_path / 'junk.pem'}"])
        )
