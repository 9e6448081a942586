"""Stand-ins for Entra ID in tests: fake token credentials and a self-signed certificate.

Azurite in ``--oauth basic`` mode accepts any unsigned JWT whose audience is storage, whose
issuer is an Entra ID tenant and whose times are valid; it needs HTTPS for that. The credentials
here issue such tokens, so user-delegation SAS can be exercised without a real tenant. They
stand for Entra ID only: never use them against a real storage account (it would refuse them).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken

STORAGE_AUDIENCE = "https://storage.azure.com"
TOKEN_LIFETIME_SECONDS = 3600


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """A JWT with ``alg: none`` and an empty signature carrying ``claims``."""

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def storage_token_claims(
    tenant_id: str, object_id: str, now: float, lifetime: float = TOKEN_LIFETIME_SECONDS
) -> dict[str, Any]:
    """The claims Azurite checks (audience, issuer, times) plus the ids a delegation key names."""
    return {
        "aud": STORAGE_AUDIENCE,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": int(now) - 60,
        "nbf": int(now) - 60,
        "exp": int(now + lifetime),
        "oid": object_id,
        "tid": tenant_id,
        "sub": object_id,
    }


class _FakeCredentialBase:
    def __init__(self, tenant_id: str | None = None, object_id: str | None = None) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.object_id = object_id or str(uuid.uuid4())
        self.tokens_issued = 0

    def _token(self, scopes: tuple[str, ...]) -> AccessToken:
        if not any(scope.startswith(STORAGE_AUDIENCE) for scope in scopes):
            raise ValueError(f"this fake credential only issues storage tokens, not {scopes}")
        now = time.time()
        self.tokens_issued += 1
        claims = storage_token_claims(self.tenant_id, self.object_id, now)
        return AccessToken(unsigned_jwt(claims), int(claims["exp"]))


class FakeTokenCredential(_FakeCredentialBase):
    """A ``TokenCredential`` issuing unsigned storage tokens that Azurite's ``--oauth basic``
    accepts (a stand-in for Entra ID in tests)."""

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """A fresh token for the storage audience."""
        return self._token(scopes)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> FakeTokenCredential:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncFakeTokenCredential(_FakeCredentialBase):
    """The ``AsyncTokenCredential`` twin of :class:`FakeTokenCredential`."""

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """A fresh token for the storage audience."""
        return self._token(scopes)

    async def close(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> AsyncFakeTokenCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()


def write_self_signed_certificate(
    folder: Path, host: str = "127.0.0.1", days: int = 2
) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` for ``host`` (SAN IP and ``localhost``) into
    ``folder``; the certificate is its own CA, so clients trust it via ``cert.pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "claimcheck-bus test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
