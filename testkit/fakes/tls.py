"""A self-signed TLS certificate for the provider fakes on 127.0.0.1.

Some clients can only speak TLS (pipecat's ``ElevenLabsRealtimeSTTService``
hard-codes ``wss://``), so the fakes serve https and wss with a certificate
made here, and the clients are told to trust it through ``SSL_CERT_FILE``.

How each client in the venv picks the certificate up:

* ``websockets`` (pipecat's ElevenLabs TTS and realtime STT, Groq TTS): builds
  ``ssl.create_default_context()`` per connection, and OpenSSL reads
  ``SSL_CERT_FILE`` then, so setting the variable any time before connecting
  is enough.
* ``httpx`` (the ``openai`` and ``groq`` SDKs): reads ``SSL_CERT_FILE`` when a
  client is *constructed* (``trust_env=True``, the default), and then trusts
  only that file instead of certifi's bundle.
* ``aiohttp``: builds its default verified context once, when
  ``aiohttp.connector`` is imported. Set ``SSL_CERT_FILE`` before anything
  imports aiohttp, or pass ``ssl=ssl.create_default_context(cafile=cert)`` to
  the request/connector, or add the certificate to the shared context with
  :func:`trust_in_aiohttp`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTS = ("127.0.0.1", "localhost")

_lock = threading.Lock()
_cached: tuple[str, str] | None = None


def make_certificate(directory: str | os.PathLike) -> tuple[str, str]:
    """Write a self-signed certificate for 127.0.0.1/localhost and its key into ``directory``.

    Returns ``(cert_path, key_path)``. The certificate is its own trust anchor:
    trusting ``cert_path`` is all a client needs.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voice-lab test fake")])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        # A self-signed anchor that also serves as the leaf: marked as a CA so
        # strict verifiers (X509_STRICT) accept it as the trust anchor.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "fake-provider-cert.pem"
    key_path = directory / "fake-provider-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def certificate_pair() -> tuple[str, str]:
    """The process-wide ``(cert_path, key_path)``, made once in a temporary directory."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = make_certificate(tempfile.mkdtemp(prefix="voice-lab-tls-"))
        return _cached


def trusted_test_certificate() -> str:
    """The path of the process-wide test certificate (what ``SSL_CERT_FILE`` should name)."""
    return certificate_pair()[0]


def server_ssl_context() -> ssl.SSLContext:
    """A server-side TLS context presenting the process-wide test certificate."""
    cert_path, key_path = certificate_pair()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def client_ssl_context() -> ssl.SSLContext:
    """A client-side context that trusts the test certificate (for aiohttp's ``ssl=``)."""
    return ssl.create_default_context(cafile=trusted_test_certificate())


def trust_in_aiohttp() -> None:
    """Make already-imported aiohttp trust the test certificate in its default context.

    aiohttp builds its verified context at import time, so a later
    ``SSL_CERT_FILE`` is not seen; this adds the certificate to that shared
    context instead (process-wide, for the rest of the run).
    """
    from aiohttp import connector

    connector._SSL_CONTEXT_VERIFIED.load_verify_locations(cafile=trusted_test_certificate())
