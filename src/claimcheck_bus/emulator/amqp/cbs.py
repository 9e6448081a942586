"""AMQP claims-based security (`$cbs`): Shared Access Signature checks (pure, no I/O)."""

from __future__ import annotations

import hashlib
import hmac
from base64 import b64encode
from dataclasses import dataclass
from urllib.parse import quote_plus, unquote, unquote_plus, urlparse

_PREFIX = "SharedAccessSignature "


@dataclass(frozen=True)
class TokenCheck:
    """The verdict on a token: ok, the audience path it grants (no leading '/'), or why not."""

    ok: bool
    audience_path: str = ""
    reason: str = ""


def sign(audience: str, key: str, expiry: int) -> str:
    """The base64 HMAC-SHA256 signature the SDKs compute for `audience` and `expiry`."""
    return sign_resource(quote_plus(audience), key, expiry)


def sign_resource(resource: str, key: str, expiry: int) -> str:
    """The signature over `resource` exactly as written in the token's `sr` field."""
    message = f"{resource}\n{expiry}".encode()
    return b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest()).decode()


def token_fields(body: str) -> dict[str, str]:
    """The raw (still URL-encoded) fields of a token body `sr=..&sig=..&se=..&skn=..`."""
    fields: dict[str, str] = {}
    for part in body.split("&"):
        name, sep, value = part.partition("=")
        if sep and name not in fields:
            fields[name] = value
    return fields


def make_token(audience: str, key_name: str, key: str, expiry: int) -> str:
    """A SAS token as the SDK builds it (used by tests and the benchmark)."""
    from urllib.parse import urlencode

    fields = {"sr": audience, "sig": sign(audience, key, expiry), "se": str(expiry)}
    return _PREFIX + urlencode(fields) + "&skn=" + quote_plus(key_name)


def audience_path(audience: str) -> str:
    """The entity path of an audience URI: 'sb://host:port/orders/' -> 'orders'."""
    parsed = urlparse(audience)
    path = parsed.path if parsed.scheme else audience
    return path.strip("/").lower()


def check_token(token: str, *, key_name: str, key: str, now: float) -> TokenCheck:
    """Verify a put-token SAS token: policy name, signature and expiry (`now` in epoch seconds).

    The signature is checked over `sr` exactly as the token carries it: the SDKs URL-encode the
    resource before signing (Python with quote_plus, JavaScript with encodeURIComponent, .NET
    with WebUtility.UrlEncode), while Microsoft's AzureSasCredential sample signs and sends
    `sb://host/entity` unencoded. Service Bus accepts both, so whatever was signed is what
    appears in the token.
    """
    if not token.startswith(_PREFIX):
        return TokenCheck(False, reason="not a SharedAccessSignature token")
    fields = token_fields(token[len(_PREFIX) :])
    try:
        resource = fields["sr"]
        signature = unquote(fields["sig"])
        expiry_text = unquote(fields["se"])
        name = unquote_plus(fields["skn"])
    except KeyError:
        return TokenCheck(False, reason="token lacks sr, sig, se or skn")
    if name != key_name:
        return TokenCheck(False, reason=f"unknown shared access policy '{name}'")
    try:
        expiry = int(expiry_text)
    except ValueError:
        return TokenCheck(False, reason="token expiry is not an integer")
    if not hmac.compare_digest(sign_resource(resource, key, expiry).encode(), signature.encode()):
        return TokenCheck(False, reason="invalid signature")
    if expiry <= now:
        return TokenCheck(False, reason="token expired")
    return TokenCheck(True, audience_path=audience_path(unquote_plus(resource)))


def grants(audience: str, entity_path: str) -> bool:
    """Whether a token for `audience` (a normalized path) covers `entity_path`."""
    entity = entity_path.strip("/").lower()
    return audience == "" or entity == audience or entity.startswith(audience + "/")
