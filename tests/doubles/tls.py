"""A certificate for a loopback double served over TLS, made at start (nothing committed)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (also its own CA), and its key;
    written as PEM files in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatops-bridge test double")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(directory) / "double.crt", Path(directory) / "double.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_context(directory: str) -> tuple[ssl.SSLContext, str]:
    """A server-side TLS context with a fresh certificate; and the CA file clients trust."""
    cert, key = self_signed(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, str(cert)


def with_system_cas(ca_file: str) -> str:
    """A CA file that trusts what this machine trusts plus `ca_file` (written beside it): what
    a client given SSL_CERT_FILE loads as it would in production, with the double added."""
    system = ssl.get_default_verify_paths().cafile or ""
    bundle = Path(system).read_bytes() if system and Path(system).is_file() else b""
    combined = Path(ca_file).with_name("trust.pem")
    combined.write_bytes(bundle + b"\n" + Path(ca_file).read_bytes())
    return str(combined)
