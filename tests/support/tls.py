"""Throw-away certificates for TLS tests: a CA, a server certificate for the loopback names and a
client certificate, as PEM files (made with trustme, which uses the `cryptography` package)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA, the server's certificate and key, and a client's."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def serve_args(self, mutual: bool = False) -> list[str]:
        """The `ferry serve` / `tritonserver` flags that turn gRPC TLS on with these files."""
        args = [
            "--grpc-server-cert",
            str(self.server_cert),
            "--grpc-server-key",
            str(self.server_key),
            "--grpc-root-cert",
            str(self.ca_cert),
        ]
        return [*args, "--grpc-use-ssl-mutual" if mutual else "--grpc-use-ssl"]

    def client_kwargs(self, with_client_cert: bool = True) -> dict[str, object]:
        """tritonclient.grpc.InferenceServerClient's TLS arguments."""
        kwargs: dict[str, object] = {"ssl": True, "root_certificates": str(self.ca_cert)}
        if with_client_cert:
            kwargs.update(private_key=str(self.client_key), certificate_chain=str(self.client_cert))
        return kwargs


def make_tls_files(folder: Path) -> TlsFiles:
    """A fresh CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("ferry-test-client@example.org", common_name="ferry-test-client")
    files = TlsFiles(
        ca_cert=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca_cert))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files
