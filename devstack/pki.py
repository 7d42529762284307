"""Certificates for the embedded clusters, in the shape controller-runtime's envtest uses.

One throwaway CA signs everything: a serving certificate and a service-account
signing key per cluster (so a token of one cluster is worthless in another),
and the client certificates of the parts that talk to them. The admin is in
``system:masters``. kube-scheduler is ``system:kube-scheduler``, with the rights
bootstrap RBAC gives it on any cluster. kube-controller-manager is
``system:kube-controller-manager`` in ``system:masters``: it runs all its
controllers as itself, without a ServiceAccount per controller (see
``controlplane.controller_manager_argv``), and that user alone may not do their work.

Every key is ECDSA P-256: an RSA key costs about 0.2 s to generate, and the
stack generates a dozen on each start. kube-apiserver signs ES256 tokens with it.
"""

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)
SERVING_NAMES = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
_SAN: list[x509.GeneralName] = [
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    *(x509.DNSName(name) for name in SERVING_NAMES),
]


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterCerts:
    """What one kube-apiserver serves with and signs ServiceAccount tokens with."""

    serving: KeyPair
    service_account_public: Path
    service_account_private: Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    kwok: KeyPair
    # kube-controller-manager and kube-scheduler serve /healthz with it; left to
    # themselves they would each generate a self-signed RSA certificate on start.
    components: KeyPair
    clusters: dict[str, ClusterCerts]


@dataclass(frozen=True)
class _Authority:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _new_authority() -> tuple[_Authority, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("sluice-devstack-ca")
    certificate = (
        _builder(name, key, name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _Authority(name, key), certificate


def _write_pair(
    authority: _Authority,
    target: KeyPair,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, key, authority.name)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    target.cert.write_bytes(
        builder.sign(authority.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    target.key.write_bytes(_pem_key(key))
    target.key.chmod(0o600)


def _client(
    authority: _Authority, directory: Path, stem: str, user: str, group: str | None = None
) -> KeyPair:
    pair = KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write_pair(authority, pair, _name(user, group), ExtendedKeyUsageOID.CLIENT_AUTH)
    return pair


def _cluster(authority: _Authority, directory: Path, cluster: str) -> ClusterCerts:
    certs = ClusterCerts(
        serving=KeyPair(directory / f"apiserver-{cluster}.crt", directory / f"apiserver-{cluster}.key"),
        service_account_public=directory / f"sa-{cluster}.pub",
        service_account_private=directory / f"sa-{cluster}.key",
    )
    _write_pair(
        authority, certs.serving, _name(f"kube-apiserver-{cluster}"), ExtendedKeyUsageOID.SERVER_AUTH, _SAN
    )
    signing_key = ec.generate_private_key(ec.SECP256R1())
    certs.service_account_private.write_bytes(_pem_key(signing_key))
    certs.service_account_private.chmod(0o600)
    certs.service_account_public.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return certs


def _components(authority: _Authority, directory: Path) -> KeyPair:
    pair = KeyPair(directory / "components.crt", directory / "components.key")
    _write_pair(authority, pair, _name("sluice-devstack-components"), ExtendedKeyUsageOID.SERVER_AUTH, _SAN)
    return pair


def generate(directory: Path, clusters: Iterable[str]) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    authority, ca = _new_authority()
    ca_cert = directory / "ca.crt"
    ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca_cert=ca_cert,
        admin=_client(authority, directory, "admin", "sluice-admin", "system:masters"),
        controller_manager=_client(
            authority, directory, "controller-manager", "system:kube-controller-manager", "system:masters"
        ),
        scheduler=_client(authority, directory, "scheduler", "system:kube-scheduler"),
        # kwok writes the status of nodes and pods, which no bootstrap role grants.
        kwok=_client(authority, directory, "kwok", "kwok", "system:masters"),
        components=_components(authority, directory),
        clusters={cluster: _cluster(authority, directory, cluster) for cluster in clusters},
    )
