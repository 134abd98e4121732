"""gRPC over TLS and mutual TLS on both transports, with tritonclient's `ssl=True` and
certificates the test makes: who gets through, who does not (the same clients as with the real
`tritonserver` given the same flags), and bad certificate files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import mlp_model, run_reference, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.support.tls import TlsFiles, make_tls_files
from tests.support.triton_server import missing_reason, running_tritonserver, write_linear_model


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tls-repo")
    write_model(repo, "linear", mlp_model(4, 8, 3, input_name="x", output_name="y"))
    return repo


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificates from another CA: the server must not accept its client certificate."""
    return make_tls_files(tmp_path_factory.mktemp("stranger"))


@pytest.fixture(scope="module", params=["ferry", "grpcio"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def tls_server(repository: Path, tls: TlsFiles, transport: str) -> Iterator[ServerProcess]:
    with running_server(repository, "--grpc-transport", transport, *tls.serve_args()) as server:
        yield server


@pytest.fixture(scope="module")
def mutual_server(repository: Path, tls: TlsFiles, transport: str) -> Iterator[ServerProcess]:
    args = tls.serve_args(mutual=True)
    with running_server(repository, "--grpc-transport", transport, *args) as server:
        yield server


def _infer(url: str, repository: Path, **client_kwargs: object) -> None:
    client = grpcclient.InferenceServerClient(url, **client_kwargs)  # type: ignore[arg-type]
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inputs = [grpcclient.InferInput("x", [2, 4], "FP32")]
        inputs[0].set_data_from_numpy(x)
        result = client.infer("linear", inputs, client_timeout=20)
        expected = run_reference(repository / "linear" / "1" / "model.onnx", {"x": x})["y"]
        np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5)
        assert client.get_model_metadata("linear", client_timeout=20).name == "linear"
    finally:
        client.close()


def _refused(url: str, **client_kwargs: object) -> str:
    client = grpcclient.InferenceServerClient(url, **client_kwargs)  # type: ignore[arg-type]
    try:
        with pytest.raises(InferenceServerException) as error:
            client.get_server_metadata(client_timeout=20)
        return str(error.value.status())
    finally:
        client.close()


def test_tls_serves_clients_that_trust_the_ca(
    tls_server: ServerProcess, tls: TlsFiles, repository: Path
) -> None:
    _infer(tls_server.grpc_url, repository, **tls.client_kwargs(with_client_cert=False))
    # a client certificate is not asked for, and does no harm
    _infer(tls_server.grpc_url, repository, **tls.client_kwargs(with_client_cert=True))
    assert "(TLS)" in tls_server.log()


def test_tls_refuses_plaintext_and_untrusting_clients(
    tls_server: ServerProcess, stranger: TlsFiles
) -> None:
    assert _refused(tls_server.grpc_url) == "StatusCode.UNAVAILABLE"
    # the client does not trust the server's CA
    assert (
        _refused(tls_server.grpc_url, ssl=True, root_certificates=str(stranger.ca_cert))
        == "StatusCode.UNAVAILABLE"
    )
    # the server keeps serving after the failed handshakes
    assert tls_server.process.poll() is None


def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    mutual_server: ServerProcess, tls: TlsFiles, stranger: TlsFiles, repository: Path
) -> None:
    _infer(mutual_server.grpc_url, repository, **tls.client_kwargs())
    assert _refused(mutual_server.grpc_url, **tls.client_kwargs(with_client_cert=False)) == (
        "StatusCode.UNAVAILABLE"
    )
    foreign_cert = {
        "ssl": True,
        "root_certificates": str(tls.ca_cert),
        "private_key": str(stranger.client_key),
        "certificate_chain": str(stranger.client_cert),
    }
    assert _refused(mutual_server.grpc_url, **foreign_cert) == "StatusCode.UNAVAILABLE"
    assert _refused(mutual_server.grpc_url) == "StatusCode.UNAVAILABLE"
    _infer(mutual_server.grpc_url, repository, **tls.client_kwargs())
    assert "(TLS, mutual)" in mutual_server.log()


@pytest.mark.parametrize("broken", ["missing", "not a certificate"])
def test_unusable_certificate_files_stop_the_server_at_start(
    repository: Path, tls: TlsFiles, transport: str, tmp_path: Path, broken: str
) -> None:
    cert = tmp_path / "server.pem"
    if broken != "missing":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    args = ["--grpc-server-cert", str(cert), "--grpc-server-key", str(tls.server_key)]
    with (
        pytest.raises(RuntimeError, match="exited with 1") as stopped,
        running_server(
            repository, "--grpc-transport", transport, *args, "--grpc-use-ssl", timeout=60
        ),
    ):
        pass
    log = str(stopped.value)
    assert "cannot start listeners" in log
    if broken == "missing":
        assert f"cannot read --grpc-server-cert {cert}" in log
    else:
        assert "do not hold a PEM certificate and its private key" in log


def _client_matrix(tls: TlsFiles, stranger: TlsFiles) -> dict[str, dict[str, object]]:
    return {
        "plaintext": {},
        "TLS, no client certificate": tls.client_kwargs(with_client_cert=False),
        "TLS, client certificate": tls.client_kwargs(),
        "TLS, client certificate of another CA": {
            **tls.client_kwargs(with_client_cert=False),
            "private_key": str(stranger.client_key),
            "certificate_chain": str(stranger.client_cert),
        },
        "TLS, trusting another CA": stranger.client_kwargs(),
    }


def _who_gets_through(url: str, clients: dict[str, dict[str, object]]) -> dict[str, bool]:
    through = {}
    for name, kwargs in clients.items():
        client = grpcclient.InferenceServerClient(url, **kwargs)  # type: ignore[arg-type]
        try:
            through[name] = client.is_server_live(client_timeout=20)
        except InferenceServerException:
            through[name] = False
        finally:
            client.close()
    return through


@pytest.mark.slow
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual"])
def test_the_same_clients_get_through_as_with_triton(
    repository: Path,
    tls: TlsFiles,
    stranger: TlsFiles,
    transport: str,
    tmp_path: Path,
    mutual: bool,
) -> None:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    clients = _client_matrix(tls, stranger)
    triton_repo = tmp_path / "triton-repo"
    write_linear_model(triton_repo, "linear")
    # Triton's boolean flags take a value
    triton_args = [*tls.serve_args()[:-1], f"--grpc-use-ssl{'-mutual' if mutual else ''}=true"]
    with running_tritonserver(triton_repo, *triton_args) as triton:
        theirs = _who_gets_through(triton.grpc_url, clients)
    args = tls.serve_args(mutual)
    with running_server(repository, "--grpc-transport", transport, *args) as ferry:
        ours = _who_gets_through(ferry.grpc_url, clients)
    assert ours == theirs
    # TLS alone never asks for a client certificate, so any (or none) gets through
    assert sum(theirs.values()) == (1 if mutual else 3)
