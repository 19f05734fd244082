"""Helpers of the operator-surface tests: certificates and a job driven by clients."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "drive_partial_job", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """PEM paths: a CA, a server cert for 127.0.0.1/localhost, a client cert, a rogue client."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    rogue_cert: str
    rogue_key: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def _write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1], hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """Generate a fresh CA, server and client certificates (and a rogue CA's client) here."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("mx8 test CA")
    rogue_ca = _ca("someone else's CA")
    server = _leaf("mx8-coordinator", ca, ExtendedKeyUsageOID.SERVER_AUTH, server=True)
    client = _leaf("mx8d-agent", ca, ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
    rogue = _leaf("intruder", rogue_ca, ExtendedKeyUsageOID.CLIENT_AUTH, server=False)
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca[0]),
        server_cert=_write_cert(directory / "server.pem", server[0]),
        server_key=_write_key(directory / "server.key", server[1]),
        client_cert=_write_cert(directory / "client.pem", client[0]),
        client_key=_write_key(directory / "client.key", client[1]),
        rogue_cert=_write_cert(directory / "rogue.pem", rogue[0]),
        rogue_key=_write_key(directory / "rogue.key", rogue[1]),
    )


async def drive_partial_job(address: str, job_id: str = "default") -> None:
    """Two nodes join; ``node-a`` finishes one lease, ``node-b`` is halfway through one.

    Leaves a running job with live leases and committed progress in epoch 0.
    """
    from mx8_common.rpc.coordinator_client import CoordinatorClient

    async with CoordinatorClient(address, token="") as client:
        await client.register_node(job_id, "node-a", hostname="host-a")
        await client.register_node(job_id, "node-b", hostname="host-b")
        for node, delivered in (("node-a", 40), ("node-b", 25)):
            await client.heartbeat(
                job_id, node, samples_delivered=delivered, bytes_fetched=delivered * 100
            )
        grant_a = await client.request_lease(job_id, "node-a", 1)
        lease_a = grant_a.leases[0]
        await client.report_progress(job_id, "node-a", lease_a.lease_id, lease_a.range.end_id)
        grant_b = await client.request_lease(job_id, "node-b", 1)
        lease_b = grant_b.leases[0]
        half = (lease_b.range.start_id + lease_b.range.end_id) // 2
        await client.report_progress(job_id, "node-b", lease_b.lease_id, half)
