"""`claimcheck-bus sweep`: deletes payloads past their message's life, keeps everything else."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from azure.storage.blob import BlobServiceClient
from tests.cli.helpers import dead_letter_all, publish, wait_until

from claimcheck_bus import BusSettings, ClaimCheckBus
from claimcheck_bus.cli.library import META_EXPIRES_AT, parse_metadata_time


def _blobs(azurite: Any, container: str) -> dict[str, dict[str, str]]:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return {
            b.name: b.metadata
            for b in service.get_container_client(container).list_blobs(include=["metadata"])
        }


def test_sweep_keeps_young_and_dead_lettered_payloads_and_deletes_expired_ones(
    cli: Any, bus_settings: BusSettings, fresh_queue: str, azurite: Any, blob_container: str
) -> None:
    lingering = publish(message_id="dead-lettered", ttl=timedelta(seconds=3))
    dead_letter_all(1)  # dead letters never expire: its payload must stay
    expired = publish(message_id="expired", ttl=timedelta(seconds=1))
    young = publish(message_id="young", ttl=timedelta(hours=1))
    forever = publish(message_id="forever")
    blobs = _blobs(azurite, blob_container)
    assert "expires_at" not in blobs[str(forever.blob_name)]
    expiries = [
        parse_metadata_time(blobs[str(r.blob_name)][META_EXPIRES_AT]) for r in (lingering, expired)
    ]
    wait_until(max(e for e in expiries if e is not None))

    dry = cli("sweep", "--grace", "0s", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert dry.json()["deleted"] == 1
    assert len(_blobs(azurite, blob_container)) == 4

    ran = cli("sweep", "--grace", "0s", "--json")
    assert ran.code == 0, ran.err
    report = ran.json()
    assert report["deleted_blobs"] == [expired.blob_name]
    assert report["deleted_bytes"] > 0
    assert report["kept"] == {"dead-lettered": 1, "message-may-live": 1, "no-expiry-recorded": 1}
    assert set(_blobs(azurite, blob_container)) == {
        lingering.blob_name,
        young.blob_name,
        forever.blob_name,
    }

    table = cli("sweep", "--grace", "0s")
    assert "kept: dead-lettered" in table.out

    everything_old = cli("sweep", "--older-than", "0s", "--grace", "0s", "--json")
    assert everything_old.json()["deleted_blobs"] == [forever.blob_name]


def test_a_topics_payloads_are_kept_until_its_subscriptions_dead_letters_are_checked(
    cli: Any,
    bus_settings: BusSettings,
    fresh_topic: tuple[str, list[str]],
    azurite: Any,
    blob_container: str,
) -> None:
    topic, subscriptions = fresh_topic
    with ClaimCheckBus(BusSettings(claim_check={"always": True})) as bus:
        receipt = bus.publish(
            {"OrderId": "t"},
            topic=topic,
            event_type="OrderCreated",
            time_to_live=timedelta(seconds=1),
        )
    metadata = _blobs(azurite, blob_container)[str(receipt.blob_name)]
    wait_until(parse_metadata_time(metadata[META_EXPIRES_AT]))  # type: ignore[arg-type]

    unchecked = cli("sweep", "--grace", "0s", "--json")
    assert unchecked.code == 0, unchecked.err
    assert unchecked.json()["kept"] == {"dead-letters-not-checked": 1}

    named = [f"--subscription={topic}/{name}" for name in subscriptions]
    ran = cli("sweep", "--grace", "0s", *named, "--json")
    assert ran.json()["deleted_blobs"] == [receipt.blob_name]
    assert _blobs(azurite, blob_container) == {}
