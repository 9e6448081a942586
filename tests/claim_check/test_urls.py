"""The payload URL rules: only trusted storage endpoints, nothing secret in what is shown."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.claim_check.urls import (
    TrustedEndpoint,
    check_payload_url,
    is_loopback,
    own_endpoint,
    redact_url,
)
from claimcheck_bus.connection_strings import blob_endpoint_from_connection_string
from claimcheck_bus.errors import UntrustedPayloadUrlError

AZURE = own_endpoint("https://contoso.blob.core.windows.net", "claim-check")
AZURITE = own_endpoint("http://127.0.0.1:10000/devstoreaccount1", "claim-check")
TRUSTED = [AZURE, AZURITE]
SIG = "sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"


def test_our_own_container_is_accepted() -> None:
    url = f"https://contoso.blob.core.windows.net/claim-check/orders/OrderCreated/1.json?sv=1&{SIG}"
    location = check_payload_url(url, TRUSTED)
    assert location.endpoint == AZURE
    assert location.blob_path == "claim-check/orders/OrderCreated/1.json"
    assert location.redacted == (
        "https://contoso.blob.core.windows.net/claim-check/orders/OrderCreated/1.json"
    )


def test_path_style_azurite_urls_are_accepted_on_loopback_http() -> None:
    url = f"http://127.0.0.1:10000/devstoreaccount1/claim-check/q/E/1.json?{SIG}"
    assert check_payload_url(url, TRUSTED).endpoint == AZURITE


def test_default_ports_and_host_case_are_normalised() -> None:
    url = "HTTPS://Contoso.Blob.Core.Windows.Net:443/claim-check/x.json"
    assert check_payload_url(url, TRUSTED).endpoint == AZURE
    assert redact_url("https://u:p@h:1/c/b?sig=x") == "https://h:1/c/b"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://evil.example/claim-check/x.json", "not under a trusted storage endpoint"),
        ("https://contoso.blob.core.windows.net:8443/claim-check/x.json", "not under a trusted"),
        ("http://contoso.blob.core.windows.net/claim-check/x.json", "http where https"),
        ("https://other.blob.core.windows.net/claim-check/x.json", "not under a trusted"),
        ("https://contoso.blob.core.windows.net/other-container/x.json", "not under a trusted"),
        ("https://contoso.blob.core.windows.net/claim-check", "not under a trusted"),
        ("https://contoso.blob.core.windows.net/claim-check/../secrets/x", "dot segment"),
        ("https://contoso.blob.core.windows.net/claim-check/%2e%2e/secrets/x", "dot segment"),
        ("https://contoso.blob.core.windows.net/claim-check/%252e%252E/x", "dot segment"),
        ("https://contoso.blob.core.windows.net/claim-check/a%5c..%5cb", "separator"),
        # The traversal of issue 16: one segment that decodes to a path into another container.
        ("https://contoso.blob.core.windows.net/claim-check/..%2Fsecret%2Fx.json", "separator"),
        ("https://contoso.blob.core.windows.net/claim-check/a%252Fb.json", "separator"),
        ("https://contoso.blob.core.windows.net/claim-check/a%25252Fb.json", "separator"),
        ("https://contoso.blob.core.windows.net/claim-check/a%00.json", "control character"),
        ("https://contoso.blob.core.windows.net/claim-check/a%250A.json", "control character"),
        ("https://contoso.blob.core.windows.net/claim-check/a%FF.json", "not UTF-8"),
        ("https://contoso.blob.core.windows.net/claim-check//x.json", "empty path segment"),
        ("https://contoso.blob.core.windows.net/claim-check/x\t.json", "whitespace"),
        ("https://contoso.blob.core.windows.net/claim-check/x\n.json", "whitespace"),
        ("https://contoso.blob.core.windows.net/claim-check/x.json\\..", "separator"),
        ("https://user:pw@contoso.blob.core.windows.net/claim-check/x", "user information"),
        ("http://127.0.0.1:10001/devstoreaccount1/claim-check/x", "not under a trusted"),
        ("http://127.0.0.1:10000/otheraccount/claim-check/x", "not under a trusted"),
        ("ftp://contoso.blob.core.windows.net/claim-check/x", "not an http(s) URL"),
        ("file:///etc/passwd", "not an http(s) URL"),
        ("", "not an http(s) URL"),
        ("https://contoso.blob.core.windows.net:99999/claim-check/x", "malformed"),
    ],
)
def test_untrusted_urls_are_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(UntrustedPayloadUrlError, match=re.escape(problem)) as caught:
        check_payload_url(url + f"?{SIG}", TRUSTED, message_id="m-1", entity="orders")
    assert "c2VjcmV0" not in str(caught.value)
    assert caught.value.message_id == "m-1"
    assert caught.value.permanent


def test_allow_http_opens_http_for_named_hosts_only() -> None:
    azurite_in_compose = TrustedEndpoint.parse("http://azurite:10000/devstoreaccount1/claim-check")
    url = "http://azurite:10000/devstoreaccount1/claim-check/x.json"
    with pytest.raises(UntrustedPayloadUrlError, match="http where https"):
        check_payload_url(url, [azurite_in_compose])
    assert check_payload_url(url, [azurite_in_compose], allow_http=True).blob_path


def test_the_refusal_names_what_is_trusted_and_how_to_add_more() -> None:
    with pytest.raises(UntrustedPayloadUrlError) as caught:
        check_payload_url("https://evil.example/claim-check/x.json", [AZURE])
    assert "https://contoso.blob.core.windows.net:443/claim-check" in str(caught.value)
    assert "claim_check.trusted_blob_endpoints" in str(caught.value)


@given(st.text())
def test_check_never_raises_anything_but_its_typed_error(text: str) -> None:
    with contextlib.suppress(UntrustedPayloadUrlError):
        check_payload_url(text, TRUSTED)


@given(st.text(alphabet="abcdef0123456789%=&", min_size=1))
def test_redaction_drops_every_query(query: str) -> None:
    redacted = redact_url(f"https://a.blob.core.windows.net/c/b.json?sig={query}#frag")
    assert redacted == "https://a.blob.core.windows.net/c/b.json"


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "example.com", "0.0.0.0"))  # noqa: S104


@pytest.mark.parametrize(
    ("connection_string", "endpoint"),
    [
        (
            "DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey=k==;EndpointSuffix=core.windows.net",
            "https://contoso.blob.core.windows.net",
        ),
        ("AccountName=contoso;AccountKey=k", "https://contoso.blob.core.windows.net"),
        (
            "DefaultEndpointsProtocol=https;AccountName=c;AccountKey=k;EndpointSuffix=core.chinacloudapi.cn",
            "https://c.blob.core.chinacloudapi.cn",
        ),
        (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k;"
            "BlobEndpoint=http://127.0.0.1:5555/devstoreaccount1/;",
            "http://127.0.0.1:5555/devstoreaccount1",
        ),
        ("UseDevelopmentStorage=true", "http://127.0.0.1:10000/devstoreaccount1"),
    ],
)
def test_blob_endpoints_from_connection_strings(connection_string: str, endpoint: str) -> None:
    assert blob_endpoint_from_connection_string(connection_string) == endpoint


def test_a_connection_string_without_account_is_explained() -> None:
    with pytest.raises(ValueError, match="names no AccountName or BlobEndpoint"):
        blob_endpoint_from_connection_string("AccountKey=secret")


def test_a_location_names_exactly_the_blob_that_was_checked() -> None:
    url = f"https://contoso.blob.core.windows.net/claim-check/q/E/a%2525b%20c.json?{SIG}#frag"
    location = check_payload_url(url, TRUSTED)
    # Decoded once, as storage names it; the fragment is not part of what is fetched.
    assert location.blob_name == "q/E/a%25b c.json"
    assert location.url == (
        f"https://contoso.blob.core.windows.net/claim-check/q/E/a%2525b%20c.json?{SIG}"
    )


@given(st.text(alphabet="%/\\.2535Ffec0aA0", max_size=12))
def test_no_accepted_segment_decodes_to_a_separator_at_any_level(segment: str) -> None:
    url = f"https://contoso.blob.core.windows.net/claim-check/{segment}/x.json"
    with contextlib.suppress(UntrustedPayloadUrlError):
        name = check_payload_url(url, TRUSTED).blob_name
        for part in name.split("/"):
            level = part
            for _ in range(6):
                assert "/" not in level
                assert "\\" not in level
                assert level not in (".", "..")
                level = unquote(level)
