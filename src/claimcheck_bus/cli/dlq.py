"""``claimcheck-bus dlq``: list, show, resubmit and purge dead letters."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from azure.core.exceptions import ResourceNotFoundError
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue

from claimcheck_bus import BusSettings, ClaimCheckBusError, rehydrate
from claimcheck_bus.claim_check.entities import Entity
from claimcheck_bus.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CommandError,
    Options,
    blob_service,
    common_options,
    console,
    describe_error,
    duration_option,
    emit_json,
    entity_of,
    entity_options,
    load_settings,
    servicebus_client,
    table,
    terminal_progress,
)
from claimcheck_bus.cli.decisions import Selection, needs_resign, sas_expires_at, selects
from claimcheck_bus.cli.library import (
    BLOB_URI,
    CONTENT_ENCODING,
    META_ENTITY,
    SIZE,
    AzureBlobPayloadStore,
    ReceivePolicy,
    amqp_long,
    declares_claim_check,
    decode_metadata_value,
    incoming_from,
    may_use_credentials,
    message_expiry,
    normalise_properties,
    payload_metadata,
    plan,
    redact_url,
    sas_expiry,
)
from claimcheck_bus.cli.messages import COLUMNS, row_of

#: Service Bus sets these on a dead-lettered message; a resubmitted copy starts clean.
_DEAD_LETTER_PROPERTIES = ("DeadLetterReason", "DeadLetterErrorDescription")
#: The SDK reports "no TTL" as TimeSpan.MaxValue (about 10675199 days).
_NO_TTL = timedelta(days=3650)


@click.group()
def dlq() -> None:
    """Dead letters: list, show, resubmit, purge."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@contextlib.contextmanager
def _dead_letters(settings: BusSettings, entity: Entity) -> Iterator[Any]:
    """A receiver on the entity's dead-letter queue (peek-lock)."""
    with servicebus_client(settings) as client:
        if entity.subscription:
            receiver = client.get_subscription_receiver(
                entity.name, entity.subscription, sub_queue=ServiceBusSubQueue.DEAD_LETTER
            )
        else:
            receiver = client.get_queue_receiver(
                entity.name, sub_queue=ServiceBusSubQueue.DEAD_LETTER
            )
        with receiver:
            yield receiver


def peek_all(receiver: Any, limit: int) -> list[Any]:
    """Up to ``limit`` messages, peeked (no lock, no delivery count) in sequence order."""
    found: list[Any] = []
    next_sequence = 0
    while len(found) < limit:
        batch = receiver.peek_messages(
            max_message_count=min(100, limit - len(found)), sequence_number=next_sequence
        )
        if not batch:
            break
        found.extend(batch)
        next_sequence = int(batch[-1].sequence_number) + 1
    return found


def _receiving_entity(
    settings: BusSettings, queue: str | None, topic: str | None, sub: str | None
) -> Entity:
    return entity_of(settings, queue, topic, sub, receiving=True)


@dlq.command("list")
@common_options
@entity_options
@click.option("--reason", help="Only dead letters with this DeadLetterReason (any case).")
@click.option("--limit", default=100, show_default=True, help="Read at most this many.")
def list_(
    options: Options,
    queue: str | None,
    topic: str | None,
    subscription: str | None,
    reason: str | None,
    limit: int,
) -> int:
    """Dead letters: id, event type, reason, description, enqueued, deliveries, route, size."""
    settings = load_settings(options)
    entity = _receiving_entity(settings, queue, topic, subscription)
    with _dead_letters(settings, entity) as receiver:
        rows = [row_of(m) for m in peek_all(receiver, limit)]
    if reason:
        rows = [r for r in rows if (r.reason or "").lower() == reason.lower()]
    if options.as_json:
        emit_json({"entity": entity.path, "dead_letters": [r.as_json() for r in rows]})
    else:
        console().print(
            table(
                f"{len(rows)} dead letter(s) in {entity.path}",
                COLUMNS,
                [r.cells() for r in rows],
            )
        )
    return 0


@dlq.command("show")
@common_options
@entity_options
@click.argument("message_id")
@click.option("--scan", default=10_000, show_default=True, help="Look at most this deep.")
@click.option(
    "--max-bytes", default=2048, show_default=True, help="Print at most this much payload."
)
def show(
    options: Options,
    queue: str | None,
    topic: str | None,
    subscription: str | None,
    message_id: str,
    scan: int,
    max_bytes: int,
) -> int:
    """One dead letter with its payload (fetched and verified), or why it cannot be fetched."""
    settings = load_settings(options)
    entity = _receiving_entity(settings, queue, topic, subscription)
    with _dead_letters(settings, entity) as receiver:
        message = next(
            (m for m in peek_all(receiver, scan) if str(m.message_id) == message_id), None
        )
    if message is None:
        raise CommandError(f"no dead letter with message id {message_id!r} in {entity.path}")
    row = row_of(message)
    properties = {
        k: v
        for k, v in normalise_properties(message.application_properties).items()
        if k != BLOB_URI
    }
    url = normalise_properties(message.application_properties).get(BLOB_URI)
    payload, problem = _payload(message, settings, entity)
    now = _now()
    sas_state = None
    if row.sas_expires_at is not None:
        sas_state = "expired" if row.sas_expires_at <= now else "valid"
    if options.as_json:
        emit_json(
            {
                "entity": entity.path,
                **row.as_json(),
                "sas": sas_state,
                "payload_url": redact_url(url) if isinstance(url, str) else None,
                "properties": {k: _plain(v) for k, v in properties.items()},
                "payload": _payload_json(payload, max_bytes),
                "payload_error": problem,
            }
        )
    else:
        out = console()
        facts = [(name, value) for name, value in zip(COLUMNS, row.cells(), strict=True)]
        facts += [
            ("session", row.session_id),
            ("sas expires", row.sas_expires_at),
            ("sas", sas_state),
        ]
        if isinstance(url, str):
            facts.append(("payload url", redact_url(url)))
        out.print(table(f"dead letter {message_id} in {entity.path}", ["field", "value"], facts))
        out.print(
            table(
                "properties",
                ["name", "value"],
                sorted((k, _plain(v)) for k, v in properties.items()),
            )
        )
        if problem:
            out.print(f"payload cannot be fetched: {problem}")
        elif payload is not None:
            out.print(_payload_text(payload, max_bytes), markup=False)
    return EXIT_FAILED if problem else 0


def _payload(
    message: Any, settings: BusSettings, entity: Entity
) -> tuple[bytes | None, str | None]:
    try:
        return rehydrate(message, bytes, settings=settings, entity=entity.name), None
    except ClaimCheckBusError as error:
        return None, describe_error(error)


def _plain(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def _payload_json(payload: bytes | None, max_bytes: int) -> Any:
    if payload is None:
        return None
    if len(payload) <= max_bytes:
        try:
            return json.loads(payload)
        except ValueError:
            pass
    return payload[:max_bytes].decode("utf-8", "replace")


def _payload_text(payload: bytes, max_bytes: int) -> str:
    text = None
    if len(payload) <= max_bytes:
        try:
            text = json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
        except ValueError:
            text = None
    if text is None:
        text = payload[:max_bytes].decode("utf-8", "replace")
    cut = f"\n... {len(payload) - max_bytes} more bytes" if len(payload) > max_bytes else ""
    return f"payload ({len(payload)} bytes):\n{text}{cut}"


# --- acting on dead letters ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a resubmit or purge did with one dead letter."""

    sequence_number: int | None
    message_id: str | None
    action: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True when the dead letter was left in place although selected."""
        return self.action.startswith("left") or self.action == "failed"


def selection_of(
    ids: tuple[str, ...], reason: str | None, everything: bool, older_than: timedelta | None
) -> Selection:
    """The selection the options describe; usage error when none was given."""
    selection = Selection(frozenset(ids), reason, older_than, everything)
    if selection.is_empty:
        raise CommandError(
            "select what to act on: --id ID, --reason R, --older-than D or --all", EXIT_USAGE
        )
    return selection


def drain(
    receiver: Any,
    selection: Selection,
    act: Callable[[Any], Outcome],
    *,
    wait: float,
    limit: int,
) -> list[Outcome]:
    """Receive the dead-letter queue under lock, ``act`` on each selected message (which
    settles it or leaves it), and give back everything else when done.

    Unselected messages stay locked until the end, so the next receive reaches further; it
    stops when a receive brings nothing new. On any interruption, every lock held is given back
    at once so that the next run sees them without waiting for the locks to expire."""
    seen: set[int] = set()
    held: list[Any] = []
    outcomes: list[Outcome] = []
    current: Any = None
    progress = terminal_progress()
    task = progress.add_task("dead letters", total=None)
    try:
        progress.start()
        while len(outcomes) < limit:
            batch = receiver.receive_messages(max_message_count=50, max_wait_time=wait)
            fresh = [m for m in batch if int(m.sequence_number) not in seen]
            held.extend(m for m in batch if int(m.sequence_number) in seen)
            if not fresh:
                break
            for message in fresh:
                seen.add(int(message.sequence_number))
                row = row_of(message)
                chosen = len(outcomes) < limit and selects(
                    selection,
                    message_id=row.message_id,
                    reason=row.reason,
                    enqueued_time=row.enqueued_time,
                    now=_now(),
                )
                if not chosen:
                    held.append(message)
                    continue
                current = message
                outcome = act(message)
                current = None
                if outcome.failed or outcome.action.startswith("would"):
                    held.append(message)
                outcomes.append(outcome)
                progress.advance(task)
    finally:
        progress.stop()
        for message in ([current] if current is not None else []) + held:
            with contextlib.suppress(Exception):  # the lock may have expired meanwhile
                receiver.abandon_message(message)
    return outcomes


def _report(outcomes: list[Outcome], title: str, options: Options, **extra: Any) -> int:
    if options.as_json:
        emit_json({**extra, "outcomes": [o.__dict__ for o in outcomes]})
    else:
        console().print(
            table(
                title,
                ["seq", "message id", "action", "detail"],
                [(o.sequence_number, o.message_id, o.action, o.detail) for o in outcomes],
            )
        )
    return EXIT_FAILED if any(o.failed for o in outcomes) else 0


def _selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--limit", default=10_000, show_default=True, help="Act on at most this many."
    )(command)
    command = click.option(
        "--wait", default=2.0, show_default=True, help="Seconds a receive waits for more."
    )(command)
    command = click.option(
        "--dry-run", is_flag=True, help="Say what would be done; change nothing."
    )(command)
    command = click.option("--all", "everything", is_flag=True, help="Every dead letter.")(command)
    command = duration_option("--older-than", "Only dead letters enqueued longer ago (e.g. 7d).")(
        command
    )
    command = click.option("--reason", help="Only dead letters with this DeadLetterReason.")(
        command
    )
    command = click.option("--id", "ids", multiple=True, help="A message id (repeatable).")(command)
    return command


@dlq.command("resubmit")
@common_options
@entity_options
@_selection_options
@click.option("--to-queue", help="Send the copies to this queue instead.")
@click.option("--to-topic", help="Send the copies to this topic instead.")
@duration_option(
    "--resign-within",
    "Re-sign a payload link that expires sooner than this (or than the copy's TTL).",
    default="1h",
)
def resubmit(
    options: Options,
    queue: str | None,
    topic: str | None,
    subscription: str | None,
    ids: tuple[str, ...],
    reason: str | None,
    older_than: timedelta | None,
    everything: bool,
    dry_run: bool,
    wait: float,
    limit: int,
    to_queue: str | None,
    to_topic: str | None,
    resign_within: timedelta,
) -> int:
    """Send dead letters back to their entity (or --to-queue/--to-topic), then complete them.

    Each copy keeps the message id, type, properties and session id; the dead letter is
    completed only after its copy was sent. A claim-check link that has expired or would
    expire within --resign-within is re-signed (a new SAS for the same blob, whose recorded
    expiry is extended for the sweep); a payload that is gone is reported and left in the
    dead-letter queue. For a subscription the copy goes to its topic, so other subscriptions
    whose filters match get it again.

    Safe to interrupt and run again: at worst a message is sent twice with the same message
    id, which duplicate detection or the worker's inbox (exactly-once projections) drops.
    """
    if to_queue and to_topic:
        raise CommandError("give --to-queue or --to-topic, not both", EXIT_USAGE)
    settings = load_settings(options)
    source = _receiving_entity(settings, queue, topic, subscription)
    if to_topic:
        target = Entity(to_topic, "topic")
    elif to_queue:
        target = Entity(to_queue, "queue")
    else:
        # A subscription has no address of its own: its messages come back through the topic.
        target = Entity(source.name, "topic" if source.subscription else "queue")
    selection = selection_of(ids, reason, everything, older_than)
    payloads = _Payloads(settings, resign_within)
    with servicebus_client(settings) as client, payloads:
        get_sender = client.get_topic_sender if target.kind == "topic" else client.get_queue_sender
        with get_sender(target.name) as sender, _dead_letters(settings, source) as receiver:

            def act(message: Any) -> Outcome:
                copy, note, problem = payloads.copy_of(message, source, dry_run=dry_run)
                seq, mid = message.sequence_number, _text(message.message_id)
                if problem:
                    return Outcome(seq, mid, "left in DLQ", problem)
                if dry_run:
                    return Outcome(seq, mid, "would resubmit", note)
                sender.send_messages(copy)
                receiver.complete_message(message)
                return Outcome(seq, mid, "resubmitted", note)

            outcomes = drain(receiver, selection, act, wait=wait, limit=limit)
    return _report(
        outcomes,
        f"resubmit from {source.path} to {target.kind} {target.name}"
        + (" (dry run)" if dry_run else ""),
        options,
        source=source.path,
        target=target.name,
        dry_run=dry_run,
    )


@dlq.command("purge")
@common_options
@entity_options
@_selection_options
def purge(
    options: Options,
    queue: str | None,
    topic: str | None,
    subscription: str | None,
    ids: tuple[str, ...],
    reason: str | None,
    older_than: timedelta | None,
    everything: bool,
    dry_run: bool,
    wait: float,
    limit: int,
) -> int:
    """Delete the selected dead letters for good (their payloads are left to `sweep`)."""
    settings = load_settings(options)
    source = _receiving_entity(settings, queue, topic, subscription)
    selection = selection_of(ids, reason, everything, older_than)
    with _dead_letters(settings, source) as receiver:

        def act(message: Any) -> Outcome:
            seq, mid = message.sequence_number, _text(message.message_id)
            if dry_run:
                return Outcome(seq, mid, "would purge")
            receiver.complete_message(message)
            return Outcome(seq, mid, "purged")

        outcomes = drain(receiver, selection, act, wait=wait, limit=limit)
    return _report(
        outcomes,
        f"purge of {source.path}" + (" (dry run)" if dry_run else ""),
        options,
        source=source.path,
        dry_run=dry_run,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class _Payloads:
    """Checks and re-signs claim-checked payloads for resubmitted copies."""

    def __init__(self, settings: BusSettings, resign_within: timedelta) -> None:
        self._settings = settings
        self._resign_within = resign_within
        self._policy = ReceivePolicy.from_settings(settings.claim_check)
        self._store: Any = None
        self._service: Any = None

    def __enter__(self) -> _Payloads:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._store is not None:
            self._store.close()
        if self._service is not None:
            self._service.close()

    def _container(self) -> Any:
        if self._service is None:
            self._service = blob_service(self._settings, retries=2)
        return self._service.get_container_client(self._settings.claim_check.container_name)

    def _the_store(self) -> Any:
        if self._store is None:
            self._store = AzureBlobPayloadStore.from_settings(
                self._settings.claim_check, retry_total=2
            )
        return self._store

    def copy_of(
        self, message: Any, source: Entity, *, dry_run: bool
    ) -> tuple[ServiceBusMessage | None, str, str | None]:
        """The copy to send, a note on what was done, or the problem that keeps it in the DLQ."""
        properties = {
            k: v
            for k, v in normalise_properties(message.application_properties).items()
            if k not in _DEAD_LETTER_PROPERTIES
        }
        ttl = message.time_to_live
        note = ""
        if declares_claim_check(properties):
            try:
                url, note = self._checked_url(message, properties, source, ttl, dry_run)
            except _LeftError as error:
                return None, "", str(error)
            except ClaimCheckBusError as error:
                return None, "", describe_error(error)
            properties[BLOB_URI] = url
            if isinstance(properties.get(SIZE), int):
                properties[SIZE] = amqp_long(properties[SIZE])
        body = incoming_from(message).body
        copy = ServiceBusMessage(
            body,
            application_properties=properties,  # type: ignore[arg-type]
            session_id=_text(message.session_id),
            message_id=_text(message.message_id),
            content_type=_text(message.content_type),
            correlation_id=_text(message.correlation_id),
            subject=_text(message.subject),
            time_to_live=ttl if ttl and ttl < _NO_TTL else None,
            to=_text(message.to),
            reply_to=_text(message.reply_to),
        )
        return copy, note, None

    def _checked_url(
        self,
        message: Any,
        properties: dict[str, Any],
        source: Entity,
        ttl: timedelta | None,
        dry_run: bool,
    ) -> tuple[str, str]:
        """The link the copy carries: the same, or a new SAS for the same blob; raises when
        the payload is gone or cannot be re-signed. A dry run reads and writes nothing."""
        incoming = incoming_from(message, entity=source.name)
        fetch = plan(incoming, self._policy)
        assert fetch is not None  # declares_claim_check was true
        url = str(properties[BLOB_URI])
        own = may_use_credentials(fetch, self._policy, incoming)
        now = _now()
        live_ttl = ttl if ttl and ttl < _NO_TTL else None
        must_last = max(self._resign_within, live_ttl or timedelta(0))
        if not own:
            # Another account's payload: it cannot be checked or re-signed with our keys.
            expiry = sas_expires_at(url)
            if needs_resign(expiry, now, must_last):
                raise _LeftError(
                    f"its link to {fetch.location.blob_path} expires and is not in our container"
                )
            return url, "link kept (not our container)"
        blob = self._container().get_blob_client(fetch.blob_name)
        try:
            recorded = blob.get_blob_properties().metadata or {}
        except ResourceNotFoundError:
            raise _LeftError(
                f"payload gone (PayloadNotFoundError): {fetch.location.blob_path}"
            ) from None
        if not needs_resign(sas_expires_at(url), now, must_last):
            return url, "payload present, link valid"
        if dry_run:
            return url, "link would be re-signed"
        store = self._the_store()
        data = store.read(fetch.blob_name)
        cc = self._settings.claim_check
        entity = recorded.get(META_ENTITY)
        metadata = payload_metadata(
            _text(message.message_id) or "",
            incoming.event_type or "",
            decode_metadata_value(entity) if entity else source.name,
            content_encoding=properties.get(CONTENT_ENCODING) or None,
            # The copy lives from now: the sweep must keep the payload that long.
            published_at=now,
            expires_at=message_expiry(now, live_ttl),
        )
        stored = store.upload(
            fetch.blob_name,
            data,
            content_type=_text(message.content_type) or "application/json",
            metadata=metadata,
            sas_expires_on=sas_expiry(now, cc.sas_expiry_hours, live_ttl, store.max_sas_lifetime),
        )
        return stored.url, "link re-signed"


class _LeftError(ClaimCheckBusError):
    """A dead letter that must stay where it is."""
