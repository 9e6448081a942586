"""The payload downloader: pure decisions directly, then real HTTP against Azurite and a
scripted local server (threads, port 0)."""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import httpx
import pytest
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus._async.downloader import AsyncPayloadDownloader
from claimcheck_bus._sync.downloader import PayloadDownloader
from claimcheck_bus.claim_check.urls import PayloadLocation, TrustedEndpoint, check_payload_url
from claimcheck_bus.errors import (
    ConfigurationError,
    InvalidClaimCheckError,
    MessageError,
    PayloadAccessDeniedError,
    PayloadIntegrityError,
    PayloadNotFoundError,
    PayloadTooLargeError,
    PayloadUnavailableError,
    UntrustedPayloadUrlError,
)
from claimcheck_bus.payloads.download import (
    BodyCheck,
    DownloadPolicy,
    DownloadState,
    Failure,
    MemorySink,
    PayloadSubject,
    StatusKind,
    StreamSink,
    backoff_delay,
    classify_status,
    expected_sha256,
    install_log_redaction,
    parse_content_length,
    redact_signatures,
    retry_after_seconds,
    status_error,
    too_large_error,
)
from claimcheck_bus.settings import ClaimCheckSettings
from claimcheck_bus.testing.azurite import Azurite

SUBJECT = PayloadSubject("msg-1", "orders", "claim-check/orders/OrderCreated/msg-1.json")
FAST = DownloadPolicy(timeout=2.0, attempts=3, backoff_initial=0.001, backoff_max=0.01)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
# What a SAS signature looks like in a URL (base64, percent-encoded); distinctive enough to grep.
SECRET = "c2VjcmV0LXNpZ25hdHVyZS0xMjM0NTY3ODkw"
SAS_QUERY = f"sv=2025-01-05&sr=b&sp=r&sig={SECRET}%3D%3D"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def location_for(url: str) -> PayloadLocation:
    parts = urlsplit(url)
    account = parts.path.strip("/").split("/")[0]
    endpoint = TrustedEndpoint.parse(f"{parts.scheme}://{parts.netloc}/{account}")
    return check_payload_url(url, [endpoint])


def assert_no_secret(error: BaseException, secret: str, log_text: str = "") -> None:
    # Any URL-encoding of the signature keeps its alphanumeric runs: look for those.
    pieces = [piece for piece in re.split(r"[^A-Za-z0-9]+", secret) if len(piece) >= 8]
    assert pieces
    formatted = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), formatted, log_text):
        for piece in pieces:
            assert piece not in text


# =========================================================================== pure decisions


@given(st.integers(min_value=100, max_value=599))
def test_every_status_has_one_meaning(status: int) -> None:
    kind = classify_status(status)
    expected = (
        StatusKind.OK
        if 200 <= status < 300
        else StatusKind.REDIRECT
        if 300 <= status < 400
        else StatusKind.NOT_FOUND
        if status in (404, 410)
        else StatusKind.ACCESS_DENIED
        if status in (401, 403)
        else StatusKind.RETRY
        if status in (408, 429) or status >= 500
        else StatusKind.REFUSED
    )
    assert kind is expected


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (301, UntrustedPayloadUrlError),
        (302, UntrustedPayloadUrlError),
        (307, UntrustedPayloadUrlError),
        (404, PayloadNotFoundError),
        (410, PayloadNotFoundError),
        (403, PayloadAccessDeniedError),
        (401, PayloadAccessDeniedError),
        (400, InvalidClaimCheckError),
        (405, InvalidClaimCheckError),
        (416, InvalidClaimCheckError),
    ],
)
def test_permanent_statuses_map_to_permanent_errors_naming_the_message(
    status: int, error_class: type[MessageError]
) -> None:
    error = status_error(status, SUBJECT)
    assert type(error) is error_class
    assert error.permanent
    for part in ("msg-1", "orders", SUBJECT.blob_path, str(status)):
        assert part in str(error)


def test_redirect_and_403_errors_say_what_to_do() -> None:
    assert "payload URL answered with a redirect" in str(status_error(302, SUBJECT))
    assert "claim_check.sas_expiry_hours" in str(status_error(403, SUBJECT))


def test_policy_comes_from_settings_and_refuses_nonsense() -> None:
    settings = ClaimCheckSettings(download_timeout_seconds=7.5, max_download_size_mb=1.5)
    policy = DownloadPolicy.from_settings(settings)
    assert policy.timeout == 7.5
    assert policy.max_bytes == 1536 * 1024
    assert DownloadPolicy.from_settings(ClaimCheckSettings()).max_bytes == 256 * 1024 * 1024
    with pytest.raises(ConfigurationError, match="attempts"):
        DownloadPolicy(attempts=0)
    with pytest.raises(ConfigurationError, match="backoff_max"):
        DownloadPolicy(backoff_initial=2.0, backoff_max=1.0)


@given(
    retry=st.integers(min_value=1, max_value=200),
    uniform=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    initial=st.floats(min_value=0.0, max_value=3.0),
    extra=st.floats(min_value=0.0, max_value=10.0),
)
def test_backoff_grows_with_jitter_and_never_exceeds_the_cap(
    retry: int, uniform: float, initial: float, extra: float
) -> None:
    policy = DownloadPolicy(backoff_initial=initial, backoff_max=initial + extra)
    ceiling = min(policy.backoff_max, initial * 2 ** min(retry - 1, 60))
    delay = backoff_delay(policy, retry, None, lambda: uniform)
    assert ceiling / 2 <= delay <= ceiling <= policy.backoff_max
    assert backoff_delay(policy, retry, None, lambda: 0.0) <= backoff_delay(
        policy, retry + 1, None, lambda: 0.0
    )


def test_backoff_doubles_from_the_initial_delay() -> None:
    policy = DownloadPolicy(backoff_initial=0.2, backoff_max=5.0)
    top = [backoff_delay(policy, retry, None, lambda: 0.999999) for retry in range(1, 8)]
    assert [round(d, 3) for d in top] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff_delay(policy, 1, None, lambda: 0.0) == pytest.approx(0.1)


@given(retry_after=st.floats(min_value=-5, max_value=1e6), uniform=st.floats(0, 0.99))
def test_retry_after_is_honoured_up_to_the_cap(retry_after: float, uniform: float) -> None:
    delay = backoff_delay(FAST, 3, retry_after, lambda: uniform)
    assert delay == min(max(retry_after, 0.0), FAST.backoff_max)


@given(st.integers(min_value=0, max_value=10**9))
def test_retry_after_seconds_reads_delta_seconds(seconds: int) -> None:
    assert retry_after_seconds(str(seconds), NOW) == seconds
    assert retry_after_seconds(f" {seconds} ", NOW) == seconds


def test_retry_after_seconds_reads_http_dates_and_ignores_garbage() -> None:
    assert retry_after_seconds(format_datetime(NOW + timedelta(seconds=42), usegmt=True), NOW) == 42
    assert retry_after_seconds(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0
    for garbage in (None, "", "soon", "-3", "1.5", "Mon, 99 Foo"):
        assert retry_after_seconds(garbage, NOW) is None


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0), ("1234", 1234), (" 7 ", 7), (None, None), ("x", None)]
)
def test_content_length_parsing(value: str | None, expected: int | None) -> None:
    assert parse_content_length(value) == expected


@given(size=st.integers(min_value=0, max_value=2**40), limit=st.integers(1, 2**40))
def test_sizes_above_the_limit_are_refused(size: int, limit: int) -> None:
    error = too_large_error(size, limit, SUBJECT, source="ClaimCheckSize")
    assert (error is not None) == (size > limit)
    if error is not None:
        assert isinstance(error, PayloadTooLargeError)
        assert str(size) in str(error)
        assert "max_download_size_mb" in str(error)


def test_expected_sha256_is_case_insensitive_and_checked() -> None:
    digest = sha(b"x")
    assert expected_sha256(digest.upper(), SUBJECT) == digest
    assert expected_sha256(None, SUBJECT) is None
    with pytest.raises(InvalidClaimCheckError, match="ClaimCheckSha256"):
        expected_sha256("abc", SUBJECT)


@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=6),
    limit=st.integers(1, 400),
)
def test_body_check_counts_hashes_and_limits_any_chunking(
    data: bytes, cuts: list[int], limit: int
) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    check = BodyCheck(SUBJECT, max_bytes=limit, sha256=sha(data), size=len(data))

    def feed_all() -> int:
        for chunk in chunks:
            check.feed(chunk)
        return check.finish()

    if len(data) > limit:
        with pytest.raises(PayloadTooLargeError):
            feed_all()
    else:
        assert feed_all() == len(data)


def test_body_check_catches_a_wrong_hash_or_size() -> None:
    check = BodyCheck(SUBJECT, max_bytes=100, sha256=sha(b"other"))
    check.feed(b"payload")
    with pytest.raises(PayloadIntegrityError, match="does not match ClaimCheckSha256"):
        check.finish()
    short = BodyCheck(SUBJECT, max_bytes=100, size=10)
    short.feed(b"12345")
    with pytest.raises(PayloadIntegrityError, match="ClaimCheckSize says 10"):
        short.finish()
    long = BodyCheck(SUBJECT, max_bytes=100, size=3)
    with pytest.raises(PayloadIntegrityError, match="more than"):
        long.feed(b"12345")


def test_memory_sink_sized_from_content_length_returns_exactly_the_body() -> None:
    sink = MemorySink()
    sink.start(10)
    sink.write(b"01234")
    sink.write(b"56789")
    assert sink.value() == b"0123456789"
    sink.start(None)
    for _ in range(100):
        sink.write(b"abc")
    assert sink.value() == b"abc" * 100
    sink.start(0)
    assert sink.value() == b""
    sink.start(10)
    sink.write(b"1234")
    assert sink.value() == b"1234"  # never padded out to the announced length


class NonSeekable(io.RawIOBase):
    """A write-only stream that cannot rewind (like a pipe or a socket)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: Any) -> int:
        self.data += chunk
        return len(chunk)


def test_stream_sink_rewinds_a_seekable_stream_to_where_it_started() -> None:
    stream = io.BytesIO(b"kept")
    stream.seek(0, io.SEEK_END)
    sink = StreamSink(stream)
    sink.write(b"partial")
    assert sink.can_restart()
    sink.restart()
    sink.write(b"whole")
    assert stream.getvalue() == b"keptwhole"
    sink.discard()
    assert stream.getvalue() == b"kept"


def test_stream_sink_retries_a_non_seekable_stream_only_before_the_first_byte() -> None:
    sink = StreamSink(NonSeekable())  # type: ignore[arg-type]
    assert sink.can_restart()
    sink.write(b"x")
    assert not sink.can_restart()


def state_for(sink: Any, policy: DownloadPolicy = FAST, **kwargs: Any) -> DownloadState:
    location = location_for(f"http://127.0.0.1:1/devstoreaccount1/c/b.json?{SAS_QUERY}")
    return DownloadState(policy, location, sink, uniform=lambda: 0.5, clock=lambda: NOW, **kwargs)


def test_state_spends_exactly_the_attempts_then_gives_up_retryably() -> None:
    state = state_for(MemorySink(), DownloadPolicy(attempts=3, backoff_initial=1, backoff_max=8))
    delays = []
    for _ in range(2):
        state.begin()
        failure = state.on_response(503, None, None)
        assert failure == Failure("HTTP 503")
        delays.append(state.delay_after(failure))
    assert delays == [0.75, 1.5]
    state.begin()
    failure = state.on_response(429, None, "2")
    assert failure == Failure("HTTP 429", 2.0)
    with pytest.raises(PayloadUnavailableError, match=r"after 3 attempts \(last: HTTP 429\)") as e:
        state.delay_after(failure)
    assert e.value.permanent is False


def test_state_refuses_before_any_request_when_the_declared_size_is_too_large() -> None:
    with pytest.raises(PayloadTooLargeError, match="ClaimCheckSize"):
        state_for(MemorySink(), DownloadPolicy(max_bytes=10), size=11)
    with pytest.raises(InvalidClaimCheckError):
        state_for(MemorySink(), size=-1)


def test_state_refuses_a_content_length_over_the_limit_or_unlike_the_declared_size() -> None:
    state = state_for(MemorySink(), DownloadPolicy(max_bytes=10))
    state.begin()
    with pytest.raises(PayloadTooLargeError, match="Content-Length"):
        state.on_response(200, "11", None)
    state = state_for(MemorySink(), size=5)
    state.begin()
    with pytest.raises(PayloadIntegrityError, match="ClaimCheckSize says 5"):
        state.on_response(200, "6", None)


def test_state_does_not_retry_a_non_seekable_sink_mid_body() -> None:
    stream = NonSeekable()
    state = state_for(StreamSink(stream))  # type: ignore[arg-type]
    state.begin()
    assert state.on_response(200, "10", None) is None
    state.on_chunk(b"12345")
    with pytest.raises(PayloadUnavailableError, match="cannot be rewound") as error:
        state.delay_after(Failure("RemoteProtocolError"))
    assert error.value.permanent is False
    assert state.attempt == 1


# =========================================================================== log redaction


def test_redact_signatures_blanks_only_signature_values() -> None:
    url = f"https://a.blob.core.windows.net/c/b?{SAS_QUERY}&se=x"
    assert redact_signatures(url) == (
        "https://a.blob.core.windows.net/c/b?sv=2025-01-05&sr=b&sp=r&sig=REDACTED&se=x"
    )
    assert redact_signatures("SIG=abc def") == "SIG=REDACTED def"
    assert redact_signatures("xsig=abc") == "xsig=abc"


def test_importing_the_module_installs_the_filter_on_the_httpx_logger() -> None:
    # A fresh interpreter: in this one, another test may already have installed it.
    code = (
        "import logging, importlib, claimcheck_bus.payloads.download as m;"
        "importlib.reload(m);"
        "print(sum(getattr(f, 'redacts_sas_signatures', False)"
        " for f in logging.getLogger('httpx').filters))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "1"


@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%+/=", min_size=12
    )
)
def test_no_signature_value_survives_redaction(signature: str) -> None:
    url = f"https://a.blob.core.windows.net/c/b?sv=1&sig={signature}&se=2"
    redacted = redact_signatures(f"GET {url} 200")
    assert signature not in redacted
    assert redacted == "GET https://a.blob.core.windows.net/c/b?sv=1&sig=REDACTED&se=2 200"


def test_the_httpx_filter_is_installed_once_and_scrubs_args() -> None:
    install_log_redaction()
    install_log_redaction()
    logger = logging.getLogger("httpx")
    ours = [
        f
        for f in logger.filters
        if isinstance(f, logging.Filter) and getattr(f, "redacts_sas_signatures", False)
    ]
    assert len(ours) == 1
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%d"',
        ("GET", httpx.URL(f"http://h/c/b?{SAS_QUERY}"), 200), None,
    )  # fmt: skip
    assert ours[0].filter(record)
    assert SECRET not in record.getMessage()
    assert record.getMessage().endswith('sig=REDACTED "200"')


# =========================================================================== a scripted server

Action = Callable[["ScriptedHandler"], None]


@dataclass
class ScriptedServer:
    """A threaded HTTP/1.1 server answering request n with script[n] (the last one repeats)."""

    script: list[Action]
    stop: threading.Event = field(default_factory=threading.Event)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    def next_action(self, path: str) -> Action:
        with self.lock:
            self.requests.append(path)
            return self.script[min(len(self.requests), len(self.script)) - 1]

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return int(self.httpd.server_address[1])

    def url(self, blob: str = "c/orders/E/msg-1.json") -> str:
        return f"http://127.0.0.1:{self.port}/devstoreaccount1/{blob}?{SAS_QUERY}"

    def location(self) -> PayloadLocation:
        return location_for(self.url())


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_GET(self) -> None:
        self.server.scripted.next_action(self.path)(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def reply(status: int, body: bytes = b"", **headers: str) -> Action:
    return lambda handler: handler.send(
        status, body, {k.replace("_", "-"): v for k, v in headers.items()}
    )


def hang(handler: ScriptedHandler) -> None:
    # Accept, read the request, never answer (until the test ends).
    handler.server.scripted.stop.wait(10)
    handler.close_connection = True


def partial(body: bytes, cut: int) -> Action:
    def act(handler: ScriptedHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:cut])
        handler.wfile.flush()
        handler.close_connection = True

    return act


def chunked_forever(chunk: bytes, limit: int) -> Action:
    def act(handler: ScriptedHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        sent = 0
        try:
            while sent < limit and not handler.server.scripted.stop.is_set():
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up: what the test expects
        handler.close_connection = True

    return act


def huge_content_length(handler: ScriptedHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**12))
    handler.end_headers()
    handler.wfile.write(b"x" * 10)
    handler.wfile.flush()
    hang(handler)


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(*script: Action) -> ScriptedServer:
        scripted = ScriptedServer(list(script))
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
        httpd.daemon_threads = True
        httpd.scripted = scripted  # type: ignore[attr-defined]
        scripted.httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}).start()
        started.append(scripted)
        return scripted

    yield start
    for scripted in started:
        scripted.stop.set()
        assert scripted.httpd is not None
        scripted.httpd.shutdown()
        scripted.httpd.server_close()


@pytest.fixture(scope="module")
def shared_client() -> Iterator[httpx.Client]:
    # A client the caller owns (here: the module), to show the policy overrides its settings.
    with httpx.Client(follow_redirects=True, timeout=60) as client:
        yield client


class Fetcher:
    """The sync or the async downloader behind one awaitable interface."""

    def __init__(self, flavour: str, policy: DownloadPolicy, client: httpx.Client) -> None:
        self.flavour = flavour
        self.sync = PayloadDownloader(policy, client=client)
        self.async_ = AsyncPayloadDownloader(policy)

    async def fetch(self, location: PayloadLocation, **kwargs: Any) -> bytes:
        if self.flavour == "sync":
            return self.sync.fetch(location, **kwargs)
        return await self.async_.fetch(location, **kwargs)

    async def fetch_to(self, location: PayloadLocation, sink: BinaryIO, **kwargs: Any) -> int:
        if self.flavour == "sync":
            return self.sync.fetch_to(location, sink, **kwargs)
        return await self.async_.fetch_to(location, sink, **kwargs)


@pytest.fixture(params=["sync", "async"])
async def downloader(
    request: pytest.FixtureRequest, shared_client: httpx.Client
) -> AsyncIterator[Callable[[DownloadPolicy], Fetcher]]:
    made: list[Fetcher] = []

    def make(policy: DownloadPolicy = FAST) -> Fetcher:
        made.append(Fetcher(request.param, policy, shared_client))
        return made[-1]

    yield make
    for fetcher in made:
        fetcher.sync.close()
        await fetcher.async_.aclose()
    assert not shared_client.is_closed


BODY = b'{"OrderId": "42", "Lines": [' + b"1," * 5000 + b"1]}"


async def test_503_twice_then_200_is_retried(serve: Any, downloader: Any) -> None:
    server = serve(reply(503), reply(503, Retry_After="0"), reply(200, BODY))
    data = await downloader().fetch(server.location(), sha256=sha(BODY), size=len(BODY))
    assert data == BODY
    assert len(server.requests) == 3


async def test_429_with_retry_after_zero_is_retried(serve: Any, downloader: Any) -> None:
    server = serve(reply(429, Retry_After="0"), reply(200, BODY))
    sink = io.BytesIO()
    assert await downloader().fetch_to(server.location(), sink) == len(BODY)
    assert sink.getvalue() == BODY
    assert len(server.requests) == 2


async def test_always_500_gives_up_after_exactly_the_attempts(
    serve: Any, downloader: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(reply(500))
    with pytest.raises(PayloadUnavailableError, match=r"after 4 attempts \(last: HTTP 500\)") as e:
        await downloader(
            DownloadPolicy(attempts=4, backoff_initial=0.001, backoff_max=0.002)
        ).fetch(server.location(), message_id="m-500", entity="orders")
    assert len(server.requests) == 4
    assert e.value.permanent is False
    assert "m-500" in str(e.value)
    assert "devstoreaccount1/c/orders/E/msg-1.json" in str(e.value)
    assert_no_secret(e.value, SECRET, caplog.text)


def test_a_downloader_closes_the_client_it_made_but_not_one_it_was_given(
    serve: Any, shared_client: httpx.Client
) -> None:
    server = serve(reply(200, BODY))
    with PayloadDownloader(FAST) as owner:
        assert owner.fetch(server.location()) == BODY
    assert owner._client.is_closed
    with PayloadDownloader(FAST, client=shared_client) as borrower:
        assert borrower.fetch(server.location()) == BODY
    assert not shared_client.is_closed


async def test_a_redirect_is_refused_and_its_target_never_asked(
    serve: Any, downloader: Any
) -> None:
    target = serve(reply(200, BODY))
    server = serve(reply(302, Location=target.url()))
    with pytest.raises(UntrustedPayloadUrlError, match="answered with a redirect") as error:
        await downloader().fetch(server.location())
    assert error.value.permanent
    assert len(server.requests) == 1
    assert target.requests == []
    assert_no_secret(error.value, SECRET)


async def test_a_content_length_over_the_limit_is_refused_before_the_body(
    serve: Any, downloader: Any
) -> None:
    # The server would stall after 10 bytes: reading the body would end in a timeout instead.
    server = serve(huge_content_length)
    with pytest.raises(PayloadTooLargeError, match="Content-Length"):
        await downloader(DownloadPolicy(max_bytes=1000, timeout=5)).fetch(server.location())
    assert len(server.requests) == 1


async def test_a_chunked_body_over_the_limit_is_aborted(serve: Any, downloader: Any) -> None:
    server = serve(chunked_forever(b"x" * 4096, limit=64 * 1024 * 1024))
    sink = io.BytesIO(b"before")
    sink.seek(0, io.SEEK_END)
    with pytest.raises(PayloadTooLargeError, match="aborted"):
        await downloader(DownloadPolicy(max_bytes=100_000)).fetch_to(server.location(), sink)
    assert sink.getvalue() == b"before"  # the partial body was taken back out
    assert len(server.requests) == 1


async def test_a_hanging_server_times_out_and_is_retried_then_unavailable(
    serve: Any, downloader: Any
) -> None:
    server = serve(hang)
    policy = DownloadPolicy(timeout=0.3, attempts=2, backoff_initial=0.001, backoff_max=0.002)
    with pytest.raises(PayloadUnavailableError, match="ReadTimeout"):
        await downloader(policy).fetch(server.location())
    assert len(server.requests) == 2


async def test_connection_refused_is_unavailable(downloader: Any) -> None:
    # Bound but not listening: connections are refused, and no one else can take the port.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        location = location_for(f"http://127.0.0.1:{port}/devstoreaccount1/c/b.json?{SAS_QUERY}")
        with pytest.raises(PayloadUnavailableError, match="ConnectError") as error:
            await downloader().fetch(location, message_id="m-refused")
    assert "after 3 attempts" in str(error.value)
    assert_no_secret(error.value, SECRET)


async def test_a_body_cut_short_is_retried_from_the_start_into_a_seekable_sink(
    serve: Any, downloader: Any
) -> None:
    server = serve(partial(BODY, 4000), reply(200, BODY))
    sink = io.BytesIO(b"HEAD")
    sink.seek(0, io.SEEK_END)
    written = await downloader().fetch_to(server.location(), sink, sha256=sha(BODY))
    assert written == len(BODY)
    assert sink.getvalue() == b"HEAD" + BODY
    assert len(server.requests) == 2
    assert await downloader().fetch(serve(partial(BODY, 10), reply(200, BODY)).location()) == BODY


async def test_a_body_cut_short_is_not_retried_into_a_non_seekable_sink(
    serve: Any, downloader: Any
) -> None:
    server = serve(partial(BODY, 4000), reply(200, BODY))
    sink = NonSeekable()
    with pytest.raises(PayloadUnavailableError, match="cannot be rewound"):
        await downloader().fetch_to(server.location(), sink)
    assert len(server.requests) == 1
    assert bytes(sink.data) == BODY[:4000]


async def test_declared_size_over_the_limit_is_refused_without_a_request(
    serve: Any, downloader: Any
) -> None:
    server = serve(reply(200, BODY))
    with pytest.raises(PayloadTooLargeError, match="ClaimCheckSize"):
        await downloader(DownloadPolicy(max_bytes=100)).fetch(server.location(), size=101)
    assert server.requests == []


async def test_the_httpx_request_line_is_logged_without_the_signature(
    serve: Any, downloader: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    server = serve(reply(200, BODY))
    assert await downloader().fetch(server.location()) == BODY
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("HTTP Request: GET" in line and "sig=REDACTED" in line for line in lines)
    assert SECRET not in caplog.text


# =========================================================================== against Azurite


@dataclass(frozen=True)
class Blobs:
    azurite: Azurite
    container: str
    small: bytes
    large: bytes

    def sas_url(self, name: str, **overrides: Any) -> str:
        sas = generate_blob_sas(
            account_name=self.azurite.account_name,
            container_name=self.container,
            blob_name=name,
            account_key=self.azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=overrides.pop("expiry", datetime.now(timezone.utc) + timedelta(minutes=10)),
            **overrides,
        )
        return f"{self.azurite.blob_endpoint}/{self.container}/{name}?{sas}"

    def location(self, name: str, **overrides: Any) -> PayloadLocation:
        endpoint = TrustedEndpoint.parse(f"{self.azurite.blob_endpoint}/{self.container}")
        return check_payload_url(self.sas_url(name, **overrides), [endpoint])


def signature_of(location: PayloadLocation) -> str:
    return parse_qs(urlsplit(location.url).query)["sig"][0]


@pytest.fixture(scope="module")
def blobs(azurite: Azurite) -> Iterator[Blobs]:
    container = f"download-{uuid.uuid4().hex[:16]}"
    stored = Blobs(azurite, container, os.urandom(1024), os.urandom(10 * 1024 * 1024))
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_container(container)
        for name, data in (
            ("orders/E/small.json", stored.small),
            ("orders/E/large.json", stored.large),
        ):
            service.get_blob_client(container, name).upload_blob(data, max_concurrency=2)
        yield stored
        service.delete_container(container)


@pytest.fixture
def payload_file(tmp_path: Path) -> Iterator[BinaryIO]:
    with (tmp_path / "payload").open("w+b") as file:
        yield file


@pytest.mark.parametrize("which", ["small", "large"])
async def test_fetch_and_fetch_to_return_the_stored_bytes(
    blobs: Blobs, downloader: Any, which: str, payload_file: BinaryIO
) -> None:
    data: bytes = getattr(blobs, which)
    location = blobs.location(f"orders/E/{which}.json")
    fetcher = downloader()
    assert await fetcher.fetch(location, sha256=sha(data).upper(), size=len(data)) == data
    assert await fetcher.fetch_to(location, payload_file, sha256=sha(data)) == len(data)
    payload_file.seek(0)
    assert payload_file.read() == data


async def test_a_wrong_sha256_is_an_integrity_error(blobs: Blobs, downloader: Any) -> None:
    location = blobs.location("orders/E/small.json")
    with pytest.raises(PayloadIntegrityError, match="does not match") as error:
        await downloader().fetch(location, sha256=sha(b"something else"), message_id="m-sha")
    assert error.value.permanent
    assert "m-sha" in str(error.value)
    sink = io.BytesIO()
    with pytest.raises(PayloadIntegrityError):
        await downloader().fetch_to(location, sink, sha256=sha(b"something else"))
    assert sink.getvalue() == b""


async def test_a_missing_blob_is_not_found(blobs: Blobs, downloader: Any) -> None:
    location = blobs.location("orders/E/missing.json")
    with pytest.raises(PayloadNotFoundError) as error:
        await downloader().fetch(location, message_id="m-404", entity="orders")
    assert f"{blobs.container}/orders/E/missing.json" in str(error.value)
    assert "m-404" in str(error.value)
    assert_no_secret(error.value, signature_of(location))


async def test_a_tampered_signature_is_access_denied_without_leaking_it(
    blobs: Blobs, downloader: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = blobs.location("orders/E/small.json")
    signature = signature_of(good)
    tampered_sig = ("A" if signature[0] != "A" else "B") + signature[1:]
    base, query = good.url.split("?", 1)
    params = [(k, tampered_sig if k == "sig" else v) for k, v in parse_qsl(query)]
    tampered = location_for(f"{base}?{urlencode(params)}")
    assert tampered.url != good.url
    with pytest.raises(PayloadAccessDeniedError, match="sas_expiry_hours") as error:
        await downloader().fetch(tampered, message_id="m-403")
    assert_no_secret(error.value, tampered_sig, caplog.text)
    assert "sig=REDACTED" in caplog.text


async def test_an_expired_sas_is_access_denied(blobs: Blobs, downloader: Any) -> None:
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    location = blobs.location("orders/E/small.json", expiry=past, start=past - timedelta(hours=1))
    with pytest.raises(PayloadAccessDeniedError) as error:
        await downloader().fetch(location)
    assert error.value.permanent
    assert error.value.dead_letter_reason == "PayloadAccessDenied"
