"""TLS for the gRPC port, from the PEM files of `--grpc-server-cert/-key/--grpc-root-cert`: a
`grpc.ServerCredentials` for grpc.aio, an `ssl.SSLContext` (ALPN h2) for ferry's transport.

A file that cannot be read or does not hold what it should is an OSError naming the flag, so
`ferry serve` exits at start with that message.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from server.settings import GrpcTls


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def grpcio_credentials(tls: GrpcTls) -> grpc.ServerCredentials:
    """grpc.aio's credentials: as Triton's, the client certificate is required and verified
    against the root certificate in mutual mode, and not asked for otherwise."""
    ssl_context(tls)  # the same checks and messages as ferry's transport (grpcio's are vague)
    key = _read(tls.server_key, "--grpc-server-key")
    cert = _read(tls.server_cert, "--grpc-server-cert")
    root = _read(tls.root_cert, "--grpc-root-cert") if tls.mutual else None
    return grpc.ssl_server_credentials([(key, cert)], root, require_client_auth=tls.mutual)


def ssl_context(tls: GrpcTls) -> ssl.SSLContext:
    """The server-side TLS context of ferry's transport (TLS 1.2+, ALPN "h2" as gRPC needs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    for path, flag in (
        (tls.server_cert, "--grpc-server-cert"),
        (tls.server_key, "--grpc-server-key"),
    ):
        _read(path, flag)  # a clear message for a missing or unreadable file
    try:
        context.load_cert_chain(tls.server_cert, tls.server_key)
    except ssl.SSLError as exc:
        raise OSError(
            f"--grpc-server-cert {tls.server_cert} / --grpc-server-key {tls.server_key} do not "
            f"hold a PEM certificate and its private key: {exc}"
        ) from None
    if tls.mutual:
        root = _read(tls.root_cert, "--grpc-root-cert")
        try:
            context.load_verify_locations(cadata=(root or b"").decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise OSError(
                f"--grpc-root-cert {tls.root_cert} does not hold PEM certificates: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
