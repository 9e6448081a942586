"""What the worker logs about its messages, and the Azure SDKs' chatter it keeps out of the way.

At INFO a worker says what it did with each message that was not a plain success (one line
each, with the message id and the entity, secrets masked); a skipped duplicate is DEBUG. The
SDKs log every link's state changes and every HTTP request at INFO, which would bury those
lines, so while a worker serves, :func:`quiet_sdk_chatter` raises the loggers nobody
configured to WARNING.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from claimcheck_bus.worker.context import EventContext
from claimcheck_bus.worker.dispatch import Decision, bounded, describe
from claimcheck_bus.worker.middleware import Outcome

#: The Azure SDK loggers that chatter at INFO: per-link AMQP state (``azure.servicebus`` and
#: its ``_pyamqp``), token requests, and one record per HTTP request (blob reads).
SDK_CHATTER = (
    "azure.servicebus",
    "azure.identity",
    "azure.core.pipeline.policies.http_logging_policy",
)

_MAX_TEXT = 500


def outcome_line(
    outcome: Outcome,
    decision: Decision | None,
    error: BaseException | None,
    *,
    message_id: str | None,
    entity: str,
    delivery_count: int,
) -> tuple[int, str] | None:
    """The level and text of the line a worker logs about one settled message, or ``None``
    for a plain success. ``error`` is the handling's error, or for ``SETTLE_FAILED`` the
    settlement's."""
    where = f"message {message_id} on {entity}"
    if outcome is Outcome.COMPLETED:
        return None
    if outcome is Outcome.DUPLICATE:
        return logging.DEBUG, f"skipped {where}: every projection had applied it already"
    if outcome is Outcome.DEAD_LETTERED:
        reason = decision.reason if decision is not None else None
        description = decision.description if decision is not None else None
        text = f"dead-lettered {where}: {reason or 'HandlerFailed'}"
        return logging.INFO, text + (f": {_one_line(description)}" if description else "")
    if outcome is Outcome.ABANDONED:
        if error is None:
            return logging.INFO, f"abandoned {where} (delivery {delivery_count}): worker stopping"
        delay = decision.delay if decision is not None else 0.0
        return logging.INFO, (
            f"abandoned {where} for a retry after {delay:.3g} s (delivery {delivery_count}): "
            f"{_one_line(describe(error))}"
        )
    failure = _one_line(describe(error)) if error is not None else "unknown error"
    return logging.WARNING, (
        f"settling {where} failed: {failure}; Service Bus delivers it again once its lock expires"
    )


def _one_line(text: str) -> str:
    return bounded(" ".join(text.split()), _MAX_TEXT)


def _lineage(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: the logger and its ancestors below the root."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def chatter_to_quiet(levels: Mapping[str, int]) -> list[str]:
    """The loggers of :data:`SDK_CHATTER` to raise to WARNING: those that neither have a level
    nor inherit one from an ancestor below the root (``levels``: logger name to its level;
    missing means NOTSET). A level someone set is their choice and stays."""
    return [
        name
        for name in SDK_CHATTER
        if all(levels.get(logger, logging.NOTSET) == logging.NOTSET for logger in _lineage(name))
    ]


_lock = threading.Lock()
_quieted: dict[str, int] = {}
"""Loggers set to WARNING here, with how many serving workers rely on it."""


def quiet_sdk_chatter() -> Callable[[], None]:
    """Raise the unconfigured :data:`SDK_CHATTER` loggers to WARNING; return the function that
    undoes it (once the last worker that asked is done, and only where the level is still
    the one set here)."""
    with _lock:
        levels = {
            logger: logging.getLogger(logger).level
            for name in SDK_CHATTER
            for logger in _lineage(name)
        }
        levels.update(dict.fromkeys(_quieted, logging.NOTSET))  # ours, not the user's
        mine = chatter_to_quiet(levels)
        for name in mine:
            logging.getLogger(name).setLevel(logging.WARNING)
            _quieted[name] = _quieted.get(name, 0) + 1

    def restore() -> None:
        with _lock:
            for name in mine:
                _quieted[name] -= 1
                if _quieted[name]:
                    continue
                del _quieted[name]
                logger = logging.getLogger(name)
                if logger.level == logging.WARNING:
                    logger.setLevel(logging.NOTSET)
            mine.clear()  # a second call does nothing

    return restore


def log_outcome(
    logger: logging.Logger,
    context: EventContext,
    outcome: Outcome,
    decision: Decision | None,
    error: BaseException | None,
) -> None:
    """Log :func:`outcome_line` for one settled message (a settlement's traceback only at
    DEBUG, so the line stays one line)."""
    if outcome is Outcome.COMPLETED:
        return
    line = outcome_line(
        outcome,
        decision,
        error,
        message_id=context.message_id,
        entity=context.entity,
        delivery_count=context.delivery_count,
    )
    if line is not None and logger.isEnabledFor(line[0]):
        traceback = outcome is Outcome.SETTLE_FAILED and logger.isEnabledFor(logging.DEBUG)
        logger.log(line[0], "%s", line[1], exc_info=error if traceback else None)
