"""Real TLS handshakes over loopback, checked the way Kong's cluster link checks them.

* :func:`cp_server` plays a control plane's ``cluster_listen`` (nginx + Kong):
  pki mode requires a client certificate that chains to ``cluster_ca_cert``;
  shared mode requests one and then Kong compares its SHA-256 digest with the
  CP's own ``cluster_cert``. The whole cert file is sent (as nginx does).
* :func:`dp_connect` plays a data plane (OpenResty cosocket) with the
  ``openssl s_client`` CLI, because the verify depth matters there and
  Python's ``ssl`` cannot set it: the CP chain is verified against the
  trusted file with ``-verify_depth`` = ``lua_ssl_verify_depth``, SNI and the
  host check use ``kong_clustering`` (shared) or ``cluster_server_name`` (pki),
  and the DP sends its leaf plus any intermediates in its cert file.

After the handshake the CP answers one line, ``ACCEPT`` or ``REJECT <why>``,
standing in for Kong's websocket upgrade or refusal, so one
:class:`HandshakeResult` says what both sides decided.

Known gaps, both outside what the tests exercise: the CP uses OpenSSL's
default verify depth (100) instead of nginx's ``ssl_verify_depth 4``, and in
shared mode Python's ``ssl`` cannot request a certificate without verifying
it (nginx ``optional_no_ca``), so the CP trusts its own certificate: a DP
presenting a different certificate is refused during the handshake rather than
by Kong's digest check afterwards. The verdict is the same.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["shared", "pki"]

KONG_SHARED_SNI = "kong_clustering"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\r?\n?", re.S)


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


@dataclass(frozen=True)
class CPVerdict:
    """What the CP decided about one connection."""

    accepted: bool
    reason: str
    peer_sha256: str | None


@dataclass(frozen=True)
class HandshakeResult:
    """Outcome of one DP -> CP connection."""

    dp_accepted: bool  # the DP verified the CP (chain, depth, host name)
    cp_accepted: bool  # the CP accepted the DP (client cert; shared: same digest)
    error: str  # the first failure, "" when both accepted
    dp_output: str = field(repr=False, default="")  # raw s_client output, for debugging

    @property
    def ok(self) -> bool:
        return self.dp_accepted and self.cp_accepted


class CPServer:
    """A running emulated ``cluster_listen``; use through :func:`cp_server`."""

    def __init__(self, ctx: ssl.SSLContext, mode: Mode, own_sha256: str, host: str) -> None:
        self._ctx = ctx
        self._mode = mode
        self._own = own_sha256
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self.verdicts: list[CPVerdict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                self.verdicts.append(self._handle(conn))

    def _handle(self, conn: socket.socket) -> CPVerdict:
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            reason = (
                getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
            )
            return CPVerdict(False, f"handshake failed: {reason}", None)
        with tls:
            peer = tls.getpeercert(binary_form=True)
            digest = hashlib.sha256(peer).hexdigest() if peer else None
            reason = ""
            if digest is None:
                reason = "data plane failed to present client certificate during handshake"
            elif self._mode == "shared" and digest != self._own:
                reason = (
                    "data plane presented incorrect client certificate during handshake "
                    "(digest does not match the control plane certificate)"
                )
            try:
                tls.sendall(b"ACCEPT\n" if not reason else b"REJECT " + reason.encode() + b"\n")
            except OSError:
                pass
            return CPVerdict(not reason, reason, digest)


def _first_cert_der(cert_file: str) -> bytes:
    with open(cert_file, "rb") as fh:
        match = _PEM_CERT.search(fh.read())
    if not match:
        raise ValueError(f"no certificate in {cert_file}")
    return ssl.PEM_cert_to_DER_cert(match.group(0).decode())


@contextmanager
def cp_server(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    mode: Mode,
    ca_file: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
) -> Iterator[CPServer]:
    """Serve Kong's cluster listener on ``host``:<free port> until the block ends."""
    cert_file, key_file = os.fspath(cert_file), os.fspath(key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)  # the whole file, like nginx ssl_certificate
    if mode == "pki":
        if ca_file is None:
            raise ValueError("pki mode needs ca_file (cluster_ca_cert)")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=os.fspath(ca_file))
    elif mode == "shared":
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=cert_file)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    own = hashlib.sha256(_first_cert_der(cert_file)).hexdigest()
    server = CPServer(ctx, mode, own, host)
    server.start()
    try:
        yield server
    finally:
        server.stop()


_VERIFY_ERR = re.compile(r"verify error:num=\d+:(.+)")
_SSL_ERR = re.compile(r"error:[0-9A-F]+:SSL routines:[^:]*:([^:\n]+)")


def dp_connect(
    host: str,
    port: int,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
    trusted_file: str | os.PathLike[str],
    verify_depth: int,
    server_name: str,
    *,
    timeout: float = 20.0,
) -> HandshakeResult:
    """Connect as a Kong DP would and report what both sides decided.

    ``cert_file`` is sent whole (leaf, then intermediates); pass None to send
    no client certificate. ``server_name`` is both the SNI and the name the CP
    certificate must match (Kong: "certificate host mismatch").
    """
    cmd = [
        "openssl", "s_client",
        "-connect", f"{host}:{port}",
        "-servername", server_name,
        "-verify_hostname", server_name,
        "-CAfile", os.fspath(trusted_file), "-no-CApath", "-no-CAstore",
        "-verify_depth", str(verify_depth),
        "-verify_return_error",
        "-ign_eof",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hyprov-dp-") as tmp:
        if cert_file is not None:
            with open(cert_file, "rb") as fh:
                pems = _PEM_CERT.findall(fh.read())
            leaf = os.path.join(tmp, "leaf.pem")
            with open(leaf, "wb") as fh:
                fh.write(pems[0])
            cmd += ["-cert", leaf, "-key", os.fspath(key_file or cert_file)]
            if len(pems) > 1:
                rest = os.path.join(tmp, "chain.pem")
                with open(rest, "wb") as fh:
                    fh.write(b"".join(pems[1:]))
                cmd += ["-cert_chain", rest]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    return _judge(out)


def _judge(out: str) -> HandshakeResult:
    if "Connection refused" in out or "errno=111" in out:
        return HandshakeResult(False, False, "connection refused", out)
    verify = _VERIFY_ERR.search(out)
    if verify:
        return HandshakeResult(False, False, verify.group(1).strip(), out)
    if "ACCEPT\n" in out:
        return HandshakeResult(True, True, "", out)
    reject = re.search(r"REJECT (.+)", out)
    if reject:
        return HandshakeResult(True, False, reject.group(1).strip(), out)
    handshake_done = "Verify return code: 0 (ok)" in out or "Verification: OK" in out
    ssl_err = _SSL_ERR.search(out)
    error = ssl_err.group(1).strip() if ssl_err else "no answer from the control plane"
    return HandshakeResult(handshake_done, False, error, out)
