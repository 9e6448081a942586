"""`claimcheck-bus dlq`: list, show, resubmit (re-signing, gone payloads, interruption), purge."""

from __future__ import annotations

from typing import Any

import pytest
from azure.servicebus import ServiceBusReceiver
from azure.storage.blob import BlobServiceClient
from tests.cli.helpers import dead_letter_all, http_status, peek, property_of, publish, wait_until

from claimcheck_bus import BusSettings
from claimcheck_bus.cli.decisions import sas_expires_at


def _expired_claim_check(message_id: str) -> None:
    receipt = publish(sas_hours=1 / 3600, message_id=message_id)
    assert receipt.blob_name is not None


def test_list_shows_route_reason_and_size_and_filters_by_reason(
    cli: Any, bus_settings: BusSettings, fresh_queue: str
) -> None:
    publish(always=False, message_id="inline-1")
    publish(message_id="claim-1")
    dead_letter_all(1, reason="HandlerFailed")
    dead_letter_all(1, reason="Poison")
    ran = cli("dlq", "list", "--json")
    assert ran.code == 0, ran.err
    rows = {r["message_id"]: r for r in ran.json()["dead_letters"]}
    assert rows["inline-1"]["route"] == "inline"
    assert rows["inline-1"]["reason"] == "HandlerFailed"
    assert rows["claim-1"]["route"] == "claim-check"
    assert rows["claim-1"]["reason"] == "Poison"
    assert rows["claim-1"]["event_type"] == "OrderCreated"
    assert rows["claim-1"]["payload_size"] > 0
    assert rows["claim-1"]["delivery_count"] >= 0
    assert rows["claim-1"]["description"] == "Poison for claim-1"
    only = cli("dlq", "list", "--reason", "poison", "--json").json()["dead_letters"]
    assert [r["message_id"] for r in only] == ["claim-1"]
    table = cli("dlq", "list")
    assert "HandlerFailed" in table.out
    assert "claim-check" in table.out


def test_show_fetches_the_payload_even_when_its_sas_expired(
    cli: Any, bus_settings: BusSettings, fresh_queue: str
) -> None:
    _expired_claim_check("old-1")
    dead_letter_all(1)
    [dead] = peek(
        str(bus_settings.service_bus.connection_string.get_secret_value()),
        fresh_queue,
        dead_letter=True,
    )  # type: ignore[union-attr]
    expiry = sas_expires_at(property_of(dead, "ClaimCheckBlobUri"))
    assert expiry is not None
    wait_until(expiry)
    ran = cli("dlq", "show", "old-1", "--json")
    assert ran.code == 0, ran.err
    data = ran.json()
    assert data["sas"] == "expired"
    assert data["payload"] == {"OrderId": "old-1", "Lines": [1, 2, 3]}
    assert data["payload_url"].endswith("/OrderCreated/old-1.json")
    text = cli("dlq", "show", "old-1")
    assert '"OrderId": "old-1"' in text.out


def test_show_says_why_a_deleted_payload_cannot_be_fetched(
    cli: Any, bus_settings: BusSettings, fresh_queue: str, azurite: Any, blob_container: str
) -> None:
    receipt = publish(message_id="gone-1")
    dead_letter_all(1)
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.get_blob_client(blob_container, str(receipt.blob_name)).delete_blob()
    ran = cli("dlq", "show", "gone-1", "--json")
    assert ran.code == 1
    assert "PayloadNotFoundError" in ran.json()["payload_error"]
    assert cli("dlq", "show", "no-such-id").code == 1


def test_resubmit_resigns_expired_links_and_leaves_gone_payloads(
    cli: Any, bus_settings: BusSettings, fresh_queue: str, azurite: Any, blob_container: str
) -> None:
    conn = bus_settings.service_bus.connection_string.get_secret_value()  # type: ignore[union-attr]
    _expired_claim_check("expired-1")
    gone = publish(message_id="gone-1")
    publish(always=False, message_id="inline-1")
    dead_letter_all(3, reason="HandlerFailed")
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.get_blob_client(blob_container, str(gone.blob_name)).delete_blob()
    old_urls = {
        str(m.message_id): property_of(m, "ClaimCheckBlobUri")
        for m in peek(conn, fresh_queue, dead_letter=True)
    }
    wait_until(sas_expires_at(old_urls["expired-1"]))  # type: ignore[arg-type]
    assert http_status(old_urls["expired-1"]) == 403

    dry = cli("dlq", "resubmit", "--all", "--dry-run", "--wait", "1", "--json")
    assert dry.code == 1  # the gone payload is reported
    assert {o["message_id"]: o["action"] for o in dry.json()["outcomes"]} == {
        "expired-1": "would resubmit",
        "gone-1": "left in DLQ",
        "inline-1": "would resubmit",
    }
    details = {o["message_id"]: o["detail"] for o in dry.json()["outcomes"]}
    assert details["expired-1"] == "link would be re-signed"
    assert len(peek(conn, fresh_queue, dead_letter=True)) == 3
    assert peek(conn, fresh_queue) == []

    ran = cli(
        "dlq",
        "resubmit",
        "--all",
        "--wait",
        "1",
        "--json",
        secrets=tuple(url.split("sig=")[1].split("&")[0] for url in old_urls.values() if url),
    )
    assert ran.code == 1
    outcomes = {o["message_id"]: o for o in ran.json()["outcomes"]}
    assert outcomes["expired-1"]["action"] == "resubmitted"
    assert outcomes["expired-1"]["detail"] == "link re-signed"
    assert outcomes["inline-1"]["action"] == "resubmitted"
    assert outcomes["gone-1"]["action"] == "left in DLQ"
    assert "PayloadNotFoundError" in outcomes["gone-1"]["detail"]

    [left] = peek(conn, fresh_queue, dead_letter=True)
    assert left.message_id == "gone-1"
    copies = {str(m.message_id): m for m in peek(conn, fresh_queue)}
    assert set(copies) == {"expired-1", "inline-1"}
    copy = copies["expired-1"]
    assert str(copy.subject) == "OrderCreated"
    assert property_of(copy, "DeadLetterReason") is None
    new_url = property_of(copy, "ClaimCheckBlobUri")
    assert new_url != old_urls["expired-1"]
    assert http_status(new_url) == 200  # a consumer without credentials can read it again
    assert isinstance(property_of(copy, "ClaimCheckSize"), int)


def test_an_interrupted_resubmit_can_run_again(
    cli: Any, bus_settings: BusSettings, fresh_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = bus_settings.service_bus.connection_string.get_secret_value()  # type: ignore[union-attr]
    for n in range(3):
        publish(message_id=f"m-{n}")
    dead_letter_all(3)
    original = ServiceBusReceiver.complete_message

    def interrupted(self: Any, message: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the copy was sent, before the completion

    monkeypatch.setattr(ServiceBusReceiver, "complete_message", interrupted)
    first = cli("dlq", "resubmit", "--all", "--wait", "1")
    assert first.code == 130
    monkeypatch.setattr(ServiceBusReceiver, "complete_message", original)
    # The copy went out, the dead letter stayed (and was given back at once).
    assert [str(m.message_id) for m in peek(conn, fresh_queue)] == ["m-0"]
    assert len(peek(conn, fresh_queue, dead_letter=True)) == 3

    again = cli("dlq", "resubmit", "--all", "--wait", "1", "--json")
    assert again.code == 0, again.err
    assert peek(conn, fresh_queue, dead_letter=True) == []
    # m-0 went out twice with the same message id: the worker's inbox drops the second.
    assert sorted(str(m.message_id) for m in peek(conn, fresh_queue)) == [
        "m-0",
        "m-0",
        "m-1",
        "m-2",
    ]


def test_purge_removes_only_what_the_filter_selects(
    cli: Any, bus_settings: BusSettings, fresh_queue: str
) -> None:
    conn = bus_settings.service_bus.connection_string.get_secret_value()  # type: ignore[union-attr]
    publish(always=False, message_id="a")
    publish(always=False, message_id="b")
    dead_letter_all(1, reason="Poison")
    dead_letter_all(1, reason="HandlerFailed")
    assert cli("dlq", "purge").code == 2  # nothing selected: refused
    young = cli("dlq", "purge", "--older-than", "1h", "--wait", "1", "--json")
    assert young.code == 0
    assert young.json()["outcomes"] == []
    dry = cli("dlq", "purge", "--reason", "Poison", "--dry-run", "--wait", "1", "--json")
    assert [o["action"] for o in dry.json()["outcomes"]] == ["would purge"]
    assert len(peek(conn, fresh_queue, dead_letter=True)) == 2
    ran = cli("dlq", "purge", "--reason", "Poison", "--wait", "1", "--json")
    assert ran.code == 0
    assert [o["message_id"] for o in ran.json()["outcomes"]] == ["a"]
    assert [str(m.message_id) for m in peek(conn, fresh_queue, dead_letter=True)] == ["b"]
    assert cli("dlq", "purge", "--older-than", "soon").code == 2


def test_a_subscriptions_dead_letters_go_back_through_their_topic(
    cli: Any, bus_settings: BusSettings, fresh_topic: tuple[str, list[str]]
) -> None:
    from azure.servicebus import ServiceBusClient, ServiceBusSubQueue

    from claimcheck_bus import ClaimCheckBus

    topic, (billing, archive) = fresh_topic
    conn = bus_settings.service_bus.connection_string.get_secret_value()  # type: ignore[union-attr]
    with ClaimCheckBus(BusSettings(claim_check={"always": True})) as bus:
        bus.publish({"OrderId": "t-1"}, topic=topic, event_type="OrderCreated", message_id="t-1")
        [event] = bus.receive(dict, topic=topic, subscription=billing, max_wait=5)
        event.dead_letter("HandlerFailed", "billing failed")

    listed = cli("dlq", "list", "--topic", topic, "--subscription", billing, "--json")
    assert [r["message_id"] for r in listed.json()["dead_letters"]] == ["t-1"]
    ran = cli("dlq", "resubmit", "-t", topic, "-s", billing, "--id", "t-1", "--wait", "1",
              "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.json()["target"] == topic

    def count(subscription: str, dead_letter: bool = False) -> int:
        sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead_letter else None
        with ServiceBusClient.from_connection_string(conn) as client:
            with client.get_subscription_receiver(topic, subscription, sub_queue=sub_queue) as r:
                return len(r.peek_messages(max_message_count=10))

    assert count(billing, dead_letter=True) == 0
    assert count(billing) == 1
    assert count(archive) == 2  # the other subscription gets the copy too (documented)
