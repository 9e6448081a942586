"""``claimcheck-bus peek`` and ``claimcheck-bus publish``: look at and send messages."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import click
from azure.servicebus import ServiceBusSubQueue

from claimcheck_bus import ClaimCheckBus, ClaimCheckBusError
from claimcheck_bus.cli.common import (
    EXIT_USAGE,
    CommandError,
    Options,
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
)
from claimcheck_bus.cli.dlq import peek_all
from claimcheck_bus.cli.messages import COLUMNS, row_of


@click.command()
@common_options
@entity_options
@click.option("--dead-letter", is_flag=True, help="Peek the dead-letter queue instead.")
@click.option("--limit", default=20, show_default=True, help="Peek at most this many.")
def peek(
    options: Options,
    queue: str | None,
    topic: str | None,
    subscription: str | None,
    dead_letter: bool,
    limit: int,
) -> int:
    """Messages waiting in a queue or subscription, without locking or settling them."""
    settings = load_settings(options)
    entity = entity_of(settings, queue, topic, subscription, receiving=True)
    sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead_letter else None
    with servicebus_client(settings) as client:
        receiver = (
            client.get_subscription_receiver(entity.name, entity.subscription, sub_queue=sub_queue)
            if entity.subscription
            else client.get_queue_receiver(entity.name, sub_queue=sub_queue)
        )
        with receiver:
            rows = [row_of(m) for m in peek_all(receiver, limit)]
    where = entity.path + ("/$DeadLetterQueue" if dead_letter else "")
    if options.as_json:
        emit_json({"entity": where, "messages": [r.as_json() for r in rows]})
    else:
        console().print(
            table(f"{len(rows)} message(s) in {where}", COLUMNS, [r.cells() for r in rows])
        )
    return 0


@click.command()
@common_options
@entity_options
@click.option(
    "--file",
    "-f",
    "file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The event as JSON (- for standard input is not supported).",
)
@click.option("--event-type", "-e", required=True, help="The event type name (e.g. OrderCreated).")
@click.option("--message-id", help="The message id [default: a new UUID].")
@click.option("--session-id", help="The session id (session-enabled entities).")
@duration_option("--ttl", "The message's time-to-live (e.g. 1d).")
def publish(
    options: Options,
    queue: str | None,
    topic: str | None,
    subscription: str | None,
    file: Path,
    event_type: str,
    message_id: str | None,
    session_id: str | None,
    ttl: timedelta | None,
) -> int:
    """Publish one JSON event the way the library does (claim-checked when large)."""
    settings = load_settings(options)
    if subscription:
        raise CommandError("publish to a topic, not a subscription", EXIT_USAGE)
    entity = entity_of(settings, queue, topic, None, receiving=False)
    try:
        event = json.loads(file.read_bytes())
    except ValueError as error:
        raise CommandError(f"{file} is not JSON: {error}", EXIT_USAGE) from None
    topic_name = entity.name if entity.kind == "topic" else None
    queue_name = None if topic_name else entity.name
    try:
        with ClaimCheckBus(settings) as bus:
            receipt = bus.publish(
                event,
                event_type=event_type,
                message_id=message_id,
                session_id=session_id,
                time_to_live=ttl,
                queue=queue_name,
                topic=topic_name,
            )
    except ClaimCheckBusError as error:
        raise CommandError(describe_error(error)) from None
    result = {
        "message_id": receipt.message_id,
        "entity": receipt.entity,
        "event_type": receipt.event_type,
        "route": receipt.route.value,
        "payload_bytes": receipt.payload_bytes,
        "blob_name": receipt.blob_name,
    }
    if options.as_json:
        emit_json(result)
    else:
        console().print(table("published", ["field", "value"], list(result.items())))
    return 0
