"""A small threaded HTTPS server for JSON APIs on 127.0.0.1, with a self-signed certificate.

The plumbing under :mod:`cmkfs.testing.fake_keyvault`: it knows nothing of Key Vault.  Every
request goes to one ``app(method, path, authorization, body)`` callable that returns
``(status, JSON payload or None, extra headers)``.
"""

from __future__ import annotations

import datetime as _dt
import http.server
import ipaddress
import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"  # never configurable: a test server has no business on another interface
CONNECTION_TIMEOUT = 30.0  # seconds a connection may sit in the TLS handshake or between requests
MAX_BODY = 64 * 1024  # request bodies are a few hundred bytes of JSON; refuse anything larger unread
CERT_VALIDITY = _dt.timedelta(days=1)

Json = dict[str, Any]
Reply = tuple[int, Json | None, dict[str, str]]
App = Callable[[str, str, str | None, bytes], Reply]


def write_self_signed(cert_path: Path, key_path: Path) -> None:
    """A P-256 certificate for 127.0.0.1 and localhost, its own CA, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmkfs fake key vault")])
    now = _dt.datetime.now(_dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(names, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Azure SDK expects
    server: JSONServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the server keeps its own request log

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True  # the body stays unread, so the connection cannot be reused
            self._reply(400 if length < 0 else 413, _error("BadParameter", "Invalid request body length."), {})
            return
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        status, payload, headers = self.server.app(method, path, self.headers.get("Authorization"), body)
        self._reply(status, payload, headers)

    def _reply(self, status: int, payload: Json | None, headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class JSONServer(http.server.ThreadingHTTPServer):
    """Serves ``app`` over TLS on ``(HOST, port)``; ``port`` 0 picks a free one."""

    daemon_threads = True  # a stuck client never keeps the process alive
    allow_reuse_address = True  # restarting on the same port must not wait for TIME_WAIT

    def __init__(self, port: int, app: App, context: ssl.SSLContext) -> None:
        self.app = app
        self.context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (a DNS lookup, unbounded in time).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.port

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the connection's thread, not in the accept loop, and is bounded in time.
        request.settimeout(CONNECTION_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        with self._connections_lock:
            self._connections.add(tls)
        try:
            super().finish_request(tls, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(tls)
            # The TLS socket took over the descriptor: shutdown_request only sees the emptied original.
            self.shutdown_request(tls)

    def shutdown_request(self, request: Any) -> None:
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        request.close()

    def drop_connections(self) -> None:
        """Cut every open keep-alive connection, as a vault that went away would."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _error(code: str, message: str) -> Json:
    return {"error": {"code": code, "message": message}}
