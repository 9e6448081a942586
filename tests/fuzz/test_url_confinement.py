"""Fuzzing the pure URL decisions: whatever a sender writes as ``ClaimCheckBlobUri``, an accepted
URL maps to exactly one confined blob name under the trusted container, and the HTTP client
would send it exactly there.

No I/O: thousands of generated URLs per test in a second or two.
"""

from __future__ import annotations

import httpx
import pytest
from azure.storage.blob import BlobClient
from fuzz_grammar import (
    Targets,
    canary_urls,
    hostile_urls,
    near_trusted_urls,
    payload_urls,
    segment_problem,
)
from fuzz_profiles import fuzz_settings
from hypothesis import assume, given
from hypothesis import strategies as st

from claimcheck_bus.claim_check.rehydration import (
    Fetch,
    IncomingMessage,
    ReceivePolicy,
    may_use_credentials,
    plan,
)
from claimcheck_bus.claim_check.urls import TrustedEndpoint, own_endpoint
from claimcheck_bus.errors import InvalidClaimCheckError, MessageError, UntrustedPayloadUrlError
from claimcheck_bus.payloads.store import blob_name_for

TARGETS = Targets(
    trusted_host="127.0.0.1",
    trusted_port=10000,
    container="claim-check",
    canary_port=18080,
    decoy_container="secrets",
)
OWN = own_endpoint("http://127.0.0.1:10000/devstoreaccount1", TARGETS.container)
AZURE = own_endpoint("https://contoso.blob.core.windows.net", "claim-check")
POLICY = ReceivePolicy(trusted=(OWN, AZURE), own=OWN)


def incoming_with(url: str) -> IncomingMessage:
    """A claim-checked message ``m-1`` on ``orders`` carrying ``url``."""
    return IncomingMessage(
        message_id="m-1",
        content_type="application/json",
        subject="OrderCreated",
        properties={"IsClaimCheck": True, "ClaimCheckBlobUri": url},
        body=b"",
        entity="orders",
    )


def planned(url: str) -> Fetch | None:
    """Plan the fetch of a claim-checked message carrying ``url``; None when it was refused
    with a typed error (any other outcome fails the test)."""
    incoming = incoming_with(url)
    refused: MessageError | None = None
    try:
        fetch = plan(incoming, POLICY)
    except (UntrustedPayloadUrlError, InvalidClaimCheckError) as error:
        refused = error
    if refused is not None:
        assert refused.message_id == "m-1"
        assert "bogus" not in str(refused), "a SAS signature leaked into an error"
        return None
    assert fetch is not None, "a claim-checked message was planned as inline"
    return fetch


def assert_confined(fetch: Fetch) -> None:
    """The accepted URL's blob name has no segment that decodes, at any level, to a separator,
    a dot segment or a control character; and the HTTP client agrees on where it goes."""
    name = fetch.blob_name
    for segment in name.split("/"):
        problem = segment_problem(segment)
        assert problem is None, f"blob name {name!r}: {problem}"
    assert_sent_where_checked(fetch)


def assert_sent_where_checked(fetch: Fetch) -> None:
    """httpx (the SAS download) would request exactly the checked blob of the trusted endpoint,
    and the store's own credentials would only ever be used on our own container."""
    endpoint = fetch.location.endpoint
    assert endpoint in POLICY.trusted
    name = fetch.blob_name
    # What httpx would request (the SAS download) must be the very same place.
    try:
        sent = httpx.URL(fetch.location.url)
    except httpx.InvalidURL as error:
        raise AssertionError(f"accepted a URL httpx cannot send: {error}") from None
    assert (sent.scheme, sent.host, sent.port or {"http": 80, "https": 443}[sent.scheme]) == (
        endpoint.scheme,
        endpoint.host.strip("[]"),
        endpoint.port,
    ), f"httpx would connect to {sent.scheme}://{sent.host}:{sent.port}, not to {endpoint}"
    raw_path = sent.raw_path.split(b"?", 1)[0].decode("ascii")
    expected = BlobClient(f"{endpoint.scheme}://x", "c", name).url.split("/c/", 1)[1]
    prefix = "/" + "/".join(endpoint.path) + "/"
    assert raw_path.startswith(prefix), f"httpx would request {raw_path!r}"
    assert (
        httpx.URL("http://x/" + raw_path[len(prefix) :]).path
        == httpx.URL("http://x/" + expected).path
    ), f"httpx would request {raw_path!r} for blob {name!r}"
    # The store's own requests (fallback read, delete) go to this container only, and only
    # for the message's own payload.
    if may_use_credentials(fetch, POLICY, incoming_with(fetch.location.url)):
        assert endpoint == OWN
        assert name.startswith("orders/")
        assert name.endswith("/m-1.json")


# Issue 16's traversal and the parser differentials the fuzzing found, kept by name.
KNOWN = [
    "http://127.0.0.1:10000/devstoreaccount1/claim-check/..%2Fsecrets%2Fx.json?sig=bogus",
    "http://127.0.0.1:10000/devstoreaccount1/claim-check/a%252Fb",
    "http://127.0.0.1:10000/devstoreaccount1/claim-check/%252e%252e/x",
    "http://127.0.0.1:10000/devstoreaccount1/claim-check/a%00b",
    "http://127.0.0.1:10000/devstoreaccount1/claim-check/a%0Ab",
    "http://127.0.0.1:10000/devstoreaccount1/claim-check/a\tb",
    "http://127.0.0.1:10000/devstoreaccount1/claim-check/a\x00b",
    "http://127.0.0.1:10\n000/devstoreaccount1/claim-check/x",
]


@pytest.mark.parametrize("url", KNOWN)
def test_known_hostile_urls_are_refused_or_confined(url: str) -> None:
    fetch = planned(url)
    if fetch is not None:
        assert_confined(fetch)


@fuzz_settings(1000, 300_000)
@given(hostile_urls(TARGETS))
def test_hostile_urls_are_refused_or_confined(url: str) -> None:
    fetch = planned(url)
    if fetch is not None:
        assert_confined(fetch)


@fuzz_settings(1000, 300_000)
@given(near_trusted_urls(TARGETS))
def test_blob_paths_under_the_trusted_container_are_confined(url: str) -> None:
    fetch = planned(url)
    if fetch is not None:
        assert_confined(fetch)


@fuzz_settings(500, 100_000)
@given(canary_urls(TARGETS))
def test_urls_of_other_ports_and_hosts_are_refused(url: str) -> None:
    assert planned(url) is None, f"accepted {url!r}"


@fuzz_settings(1000, 300_000)
@given(payload_urls(TARGETS))
def test_the_url_check_only_ever_raises_typed_errors(url: str) -> None:
    try:
        planned(url)
    except AssertionError:
        raise
    except MessageError as unexpected:
        raise AssertionError(f"{type(unexpected).__name__} where a refusal was due") from None


@fuzz_settings(1000, 200_000)
@given(
    st.sampled_from(("orders", "sales/orders", "q-1")),
    st.text(min_size=1, max_size=30),
    st.text(min_size=1, max_size=40),
)
def test_every_url_our_publisher_makes_maps_back_to_its_blob(
    entity: str, event_type: str, message_id: str
) -> None:
    """The confinement must not refuse what our own publisher writes: the blob name of any
    (entity, event type, message id), as the storage SDK puts it in a URL, is accepted and
    maps back to that very name."""
    try:
        name = blob_name_for(entity, event_type, message_id)
    except MessageError:
        assume(False)
        raise
    url = BlobClient(str(OWN).rsplit("/", 1)[0], TARGETS.container, name).url + "?sig=bogus"
    fetch = planned(url)
    assert fetch is not None, f"our own URL for blob {name!r} was refused"
    assert fetch.blob_name == name
    assert_sent_where_checked(fetch)


def test_the_trusted_endpoint_of_the_grammar_is_what_the_tests_trust() -> None:
    assert TrustedEndpoint.parse(TARGETS.trusted_prefix) == OWN
