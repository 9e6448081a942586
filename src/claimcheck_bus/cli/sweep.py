"""``claimcheck-bus sweep``: delete claim-check payloads no message can still reference."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.exceptions import ServiceBusError

from claimcheck_bus import BusSettings
from claimcheck_bus.cli.common import (
    EXIT_FAILED,
    Options,
    blob_service,
    common_options,
    console,
    describe_error,
    duration_option,
    emit_json,
    load_settings,
    servicebus_client,
    table,
    terminal_progress,
    warn,
)
from claimcheck_bus.cli.decisions import SweepVerdict, guarded, sweep_verdict
from claimcheck_bus.cli.library import (
    META_ENTITY,
    META_EXPIRES_AT,
    META_MESSAGE_ID,
    META_PUBLISHED_AT,
    decode_metadata_value,
    parse_metadata_time,
)

#: Reason for blobs whose entity's dead letters could not be read (a topic without --subscription).
UNCHECKED = "dead-letters-not-checked"


@dataclass(frozen=True)
class Candidate:
    """One payload blob and what its metadata says."""

    name: str
    size: int
    entity: str | None
    message_id: str | None
    verdict: SweepVerdict


@click.command()
@common_options
@duration_option(
    "--older-than",
    "Also delete blobs with no recorded expiry (messages without TTL, other publishers) "
    "published longer ago than this. Without it they are kept.",
)
@duration_option("--grace", "Wait this long past a recorded expiry.", default="1h")
@click.option(
    "--subscription",
    "subscriptions",
    multiple=True,
    metavar="TOPIC/SUB",
    help="A subscription whose dead letters to check for a topic's payloads (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def sweep(
    options: Options,
    older_than: timedelta | None,
    grace: timedelta,
    subscriptions: tuple[str, ...],
    dry_run: bool,
) -> int:
    """Delete claim-check payloads that no message can still reference.

    Publishing records on each blob the latest time its message can exist (enqueue time plus
    TTL). A blob past that plus --grace is deleted, unless a dead letter of its entity still
    references it (dead letters never expire): the dead-letter queue of a queue is read
    directly; a topic's subscriptions must be named with --subscription, else its blobs are
    kept. Complements a lifecycle rule and never deletes what a live message may reference.
    """
    settings = load_settings(options)
    now = datetime.now(timezone.utc)
    service = blob_service(settings)
    container = service.get_container_client(settings.claim_check.container_name)
    with service:
        candidates = _examine(container, now, grace, older_than)
        dead = _dead_letter_ids(
            settings, {c.entity for c in candidates if c.verdict.delete}, subscriptions
        )
        candidates = [_guard(c, dead) for c in candidates]
        deleted, failed = _delete(container, [c for c in candidates if c.verdict.delete], dry_run)
    kept = Counter(c.verdict.reason for c in candidates if not c.verdict.delete)
    summary = {
        "container": settings.claim_check.container_name,
        "dry_run": dry_run,
        "examined": len(candidates),
        "deleted": len(deleted),
        "deleted_bytes": sum(c.size for c in deleted),
        "kept": dict(kept),
        "failed": failed,
    }
    if options.as_json:
        emit_json({**summary, "deleted_blobs": [c.name for c in deleted]})
    else:
        verb = "would delete" if dry_run else "deleted"
        rows: list[tuple[str, object, str]] = [("examined", len(candidates), "")]
        rows.append((verb, len(deleted), f"{summary['deleted_bytes']} bytes"))
        rows += [(f"kept: {reason}", count, "") for reason, count in sorted(kept.items())]
        rows += [("failed", name, error) for name, error in failed.items()]
        console().print(
            table(f"sweep of container {summary['container']}", ["", "blobs", ""], rows)
        )
    return EXIT_FAILED if failed else 0


def _examine(
    container: Any, now: datetime, grace: timedelta, older_than: timedelta | None
) -> list[Candidate]:
    found = []
    with terminal_progress() as progress:
        task = progress.add_task("examining payloads", total=None)
        for blob in container.list_blobs(include=["metadata"]):
            metadata = blob.metadata or {}
            verdict = sweep_verdict(
                expires_at=parse_metadata_time(metadata.get(META_EXPIRES_AT)),
                published_at=parse_metadata_time(metadata.get(META_PUBLISHED_AT)),
                last_modified=blob.last_modified,
                now=now,
                grace=grace,
                older_than=older_than,
            )
            found.append(
                Candidate(
                    blob.name,
                    int(blob.size or 0),
                    _decoded(metadata.get(META_ENTITY)),
                    _decoded(metadata.get(META_MESSAGE_ID)),
                    verdict,
                )
            )
            progress.advance(task)
    return found


def _decoded(value: str | None) -> str | None:
    return decode_metadata_value(value) if value else None


def _dead_letter_ids(
    settings: BusSettings, entities: set[str | None], subscriptions: tuple[str, ...]
) -> dict[str, set[str] | None]:
    """Message ids of each entity's dead letters; None where they could not be read."""
    result: dict[str, set[str] | None] = {}
    named: dict[str, list[str]] = {}
    for item in subscriptions:
        topic, _, sub = item.partition("/")
        named.setdefault(topic, []).append(sub)
    wanted = sorted(e for e in entities if e)
    if not wanted:
        return result
    with servicebus_client(settings, retries=1) as client:
        for entity in wanted:
            receivers = (
                [
                    client.get_subscription_receiver(
                        entity, s, sub_queue=ServiceBusSubQueue.DEAD_LETTER
                    )
                    for s in named[entity]
                ]
                if entity in named
                else [client.get_queue_receiver(entity, sub_queue=ServiceBusSubQueue.DEAD_LETTER)]
            )
            ids: set[str] | None = set()
            for receiver in receivers:
                try:
                    with receiver:
                        ids |= _all_ids(receiver)  # type: ignore[operator]
                except ServiceBusError:
                    ids = None  # not a queue (a topic without --subscription), or unreadable
                    break
            result[entity] = ids
    return result


def _all_ids(receiver: Any) -> set[str]:
    ids: set[str] = set()
    sequence = 0
    while True:
        batch = receiver.peek_messages(max_message_count=250, sequence_number=sequence)
        if not batch:
            return ids
        ids.update(str(m.message_id) for m in batch if m.message_id is not None)
        sequence = int(batch[-1].sequence_number) + 1


def _guard(candidate: Candidate, dead: dict[str, set[str] | None]) -> Candidate:
    if not candidate.verdict.delete or candidate.entity is None:
        return candidate
    ids = dead.get(candidate.entity)
    if ids is None:
        return Candidate(
            candidate.name,
            candidate.size,
            candidate.entity,
            candidate.message_id,
            SweepVerdict(False, UNCHECKED),
        )
    verdict = guarded(candidate.verdict, candidate.message_id, ids)
    return Candidate(
        candidate.name, candidate.size, candidate.entity, candidate.message_id, verdict
    )


def _delete(
    container: Any, doomed: list[Candidate], dry_run: bool
) -> tuple[list[Candidate], dict[str, str]]:
    if dry_run:
        return doomed, {}
    deleted: list[Candidate] = []
    failed: dict[str, str] = {}
    with terminal_progress() as progress:
        task = progress.add_task("deleting payloads", total=len(doomed))
        for candidate in doomed:
            try:
                container.delete_blob(candidate.name)
                deleted.append(candidate)
            except ResourceNotFoundError:
                deleted.append(candidate)  # gone meanwhile: the goal is reached
            except AzureError as error:
                failed[candidate.name] = describe_error(error)
                warn(f"could not delete {candidate.name}: {failed[candidate.name]}")
            progress.advance(task)
    return deleted, failed
