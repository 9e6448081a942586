"""The receive-side decisions: where a payload is and what our own store may read."""

from __future__ import annotations

import pytest

from claimcheck_bus.claim_check.rehydration import (
    IncomingMessage,
    ReceivePolicy,
    decode_content,
    may_use_credentials,
    plan,
)
from claimcheck_bus.claim_check.urls import own_endpoint
from claimcheck_bus.errors import PayloadTooLargeError, UntrustedPayloadUrlError

AZURE = own_endpoint("https://contoso.blob.core.windows.net", "claim-check")
AZURITE = own_endpoint("http://127.0.0.1:10000/devstoreaccount1", "claim-check")


def incoming(**properties: object) -> IncomingMessage:
    return IncomingMessage("m-1", None, None, dict(properties), b"inline", entity="orders")


@pytest.mark.parametrize(
    ("own", "url", "blob_name"),
    [
        (
            AZURE,
            "https://contoso.blob.core.windows.net/claim-check/orders/E/m-1.json?sig=x",
            "orders/E/m-1.json",
        ),
        (
            AZURITE,
            "http://127.0.0.1:10000/devstoreaccount1/claim-check/orders/E/m-1.json",
            "orders/E/m-1.json",
        ),
        (
            AZURE,
            "https://contoso.blob.core.windows.net/claim-check/orders/E%20F/m-1.json",
            "orders/E F/m-1.json",
        ),
    ],
)
def test_the_blob_name_is_what_follows_account_and_container(
    own: object, url: str, blob_name: str
) -> None:
    policy = ReceivePolicy(trusted=(own,), own=own)  # type: ignore[arg-type]
    fetch = plan(incoming(IsClaimCheck=True, ClaimCheckBlobUri=url), policy)
    assert fetch is not None
    assert fetch.blob_name == blob_name
    assert may_use_credentials(fetch, policy, incoming())


@pytest.mark.parametrize(
    "path",
    [
        "payments/E/m-1.json",  # another entity's payload
        "orders/E/m-2.json",  # another message's
        "orders/m-1.json",  # not our layout
        "secret/x.json",
    ],
)
def test_our_credentials_never_serve_a_payload_the_message_does_not_own(path: str) -> None:
    policy = ReceivePolicy(trusted=(AZURE,), own=AZURE)
    url = f"https://contoso.blob.core.windows.net/claim-check/{path}?sig=x"
    fetch = plan(incoming(IsClaimCheck=True, ClaimCheckBlobUri=url), policy)
    assert fetch is not None
    assert not may_use_credentials(fetch, policy, incoming())


def test_inline_messages_need_no_fetch() -> None:
    assert plan(incoming(), ReceivePolicy(trusted=(AZURE,))) is None


def test_foreign_trusted_endpoints_are_never_read_with_our_credentials() -> None:
    other = own_endpoint("https://partner.blob.core.windows.net", "out")
    policy = ReceivePolicy(trusted=(AZURE, other), own=AZURE)
    fetch = plan(
        incoming(
            IsClaimCheck=True, ClaimCheckBlobUri="https://partner.blob.core.windows.net/out/x"
        ),
        policy,
    )
    assert fetch is not None
    assert not may_use_credentials(fetch, policy, incoming())


def test_declared_sizes_over_the_limit_are_refused_before_any_request() -> None:
    policy = ReceivePolicy(trusted=(AZURE,), max_bytes=100)
    url = "https://contoso.blob.core.windows.net/claim-check/x"
    with pytest.raises(PayloadTooLargeError, match="above the receiver's limit of 100"):
        plan(incoming(IsClaimCheck=True, ClaimCheckBlobUri=url, ClaimCheckSize=101), policy)
    with pytest.raises(UntrustedPayloadUrlError):
        plan(incoming(IsClaimCheck="True", ClaimCheckBlobUri="https://evil/x"), policy)


def test_gzip_content_is_inflated_within_bounds() -> None:
    import gzip

    where = {"message_id": "m", "entity": "q", "blob_path": None}
    assert decode_content(gzip.compress(b"abc"), "gzip", max_bytes=10, where=where) == b"abc"
    assert decode_content(b"raw", None, max_bytes=10, where=where) == b"raw"
    with pytest.raises(PayloadTooLargeError):
        decode_content(gzip.compress(b"a" * 1000), "gzip", max_bytes=10, where=where)
    from claimcheck_bus.errors import EventDecodeError

    with pytest.raises(EventDecodeError, match="unknown ClaimCheckContentEncoding"):
        decode_content(b"x", "br", max_bytes=10, where=where)
    with pytest.raises(EventDecodeError, match="not valid gzip"):
        decode_content(b"not gzip", "gzip", max_bytes=10, where=where)
