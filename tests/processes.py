"""Helpers of the tests that run real processes: free ports, `tutor serve` in a subprocess
(over TLS with a self-signed certificate if asked), waiting on a condition, and a voice socket
expected to be refused."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.realtime_client import Conversation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
                     ) -> tuple[Path, Path]:
    """A self-signed certificate for `hosts` (IP addresses or names) and its key, as PEM files
    in `folder`: (cert.pem, key.pem). Clients trust it by loading cert.pem as their CA
    (`ssl.create_default_context(cafile=...)`, Node's NODE_EXTRA_CA_CERTS)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            # its own CA as well as the server's: what strict verifiers (Python 3.13's default
            # context, Node) want of a trusted self-signed certificate
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def server_env(fake: Any, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a `tutor serve` subprocess: this one without provider, TUTOR_ or
    Stripe variables, the loopback fake provider (`fake.base_url`), data in `tmp_path/data`,
    and `settings` (e.g. TUTOR_HTTP_HEAD_TIMEOUT_S="0.5")."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "LLM_", "TUTOR_", "STRIPE_"))}
    env.update({"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "test",
                "TUTOR_DATA_DIR": str(tmp_path / "data"), "TUTOR_LOAD_SAMPLE_COURSE": "false"})
    env.update(settings)
    return env


class ServerProcess:
    """`tutor serve` in a subprocess, its output in a log file.

    `tls=(cert, key)` serves https:// and wss:// (`--ssl-certfile/--ssl-keyfile`). `http_url`,
    `ws_url` and `ssl_context()` are what clients need.
    """

    def __init__(self, name: str, env: dict[str, str], cwd: Path, *,
                 tls: tuple[Path, Path] | None = None, args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.port = free_port()
        self.tls = tls
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "wb")
        tutor = os.path.join(os.path.dirname(sys.executable), "tutor")
        command = [tutor, "serve", "--port", str(self.port), "--log-level", "info"]
        if tls is not None:
            command += ["--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1])]
        command += list(args)  # e.g. ("--workers", "2")
        # cwd is the test's own directory, so no developer's .env is read.
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def ws_url(self) -> str:
        """The base of the socket URLs: ws(s)://127.0.0.1:PORT (append /v1/realtime...)."""
        return f"{'wss' if self.tls else 'ws'}://{self.address}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this server's certificate (None without TLS)."""
        return ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def ready(self, deadline: float) -> None:
        async with httpx.AsyncClient(verify=self.ssl_context() or True) as client:
            while True:
                assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
                try:
                    r = await client.get(f"{self.http_url}/healthz", timeout=1)
                    health = r.json()
                    assert {k: health[k] for k in ("status", "transcription", "chat",
                                                   "moderation")} == {
                        "status": "ok", "transcription": True, "chat": True,
                        "moderation": False}
                    return
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"{self.name} did not start:\n{self.log()}"
                    await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 5)
        self._log.close()


async def wait_for(condition, what: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    """Polls an async condition until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def refused(url: str, headers: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Opens a voice socket expected to be refused: its one event and its close code."""
    async with websockets.connect(url, additional_headers=headers) as ws:
        conv = Conversation(ws)
        event = await conv.next()
        with pytest.raises(websockets.ConnectionClosed) as info:
            await conv.next()
    assert info.value.rcvd is not None
    return event, info.value.rcvd.code
