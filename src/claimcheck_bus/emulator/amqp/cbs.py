"""AMQP claims-based security (`$cbs`): Shared Access Signature checks (pure, no I/O)."""

from __future__ import annotations

import hashlib
import hmac
from base64 import b64encode
from dataclasses import dataclass
from urllib.parse import parse_qs, quote_plus, urlparse

_PREFIX = "SharedAccessSignature "


@dataclass(frozen=True)
class TokenCheck:
    """The verdict on a token: ok, the audience path it grants (no leading '/'), or why not."""

    ok: bool
    audience_path: str = ""
    reason: str = ""


def sign(audience: str, key: str, expiry: int) -> str:
    """The base64 HMAC-SHA256 signature Service Bus expects for `audience` and `expiry`."""
    message = f"{quote_plus(audience)}\n{expiry}".encode()
    return b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest()).decode()


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
    """Verify a put-token SAS token: policy name, signature and expiry (`now` in epoch seconds)."""
    if not token.startswith(_PREFIX):
        return TokenCheck(False, reason="not a SharedAccessSignature token")
    fields = parse_qs(token[len(_PREFIX) :], keep_blank_values=True)
    try:
        audience = fields["sr"][0]
        signature = fields["sig"][0]
        expiry_text = fields["se"][0]
        name = fields["skn"][0]
    except (KeyError, IndexError):
        return TokenCheck(False, reason="token lacks sr, sig, se or skn")
    if name != key_name:
        return TokenCheck(False, reason=f"unknown shared access policy '{name}'")
    try:
        expiry = int(expiry_text)
    except ValueError:
        return TokenCheck(False, reason="token expiry is not an integer")
    if not hmac.compare_digest(sign(audience, key, expiry), signature):
        return TokenCheck(False, reason="invalid signature")
    if expiry <= now:
        return TokenCheck(False, reason="token expired")
    return TokenCheck(True, audience_path=audience_path(audience))


def grants(audience: str, entity_path: str) -> bool:
    """Whether a token for `audience` (a normalized path) covers `entity_path`."""
    entity = entity_path.strip("/").lower()
    return audience == "" or entity == audience or entity.startswith(audience + "/")
