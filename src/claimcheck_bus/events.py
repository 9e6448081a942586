"""Events to bytes and back: pydantic models, dataclasses, dicts, lists, ``bytes`` and ``str``.

JSON is written by alias, so models shared with .NET services use the .NET property names
(``OrderId``); :class:`PascalCaseEvent` makes that the default for a model. Reading goes through a
cached pydantic ``TypeAdapter`` of the requested type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.alias_generators import to_pascal

from claimcheck_bus.errors import EventDecodeError, InvalidEventError

T = TypeVar("T")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"


class PascalCaseEvent(BaseModel):
    """A pydantic model whose JSON uses PascalCase names, as .NET's System.Text.Json expects.

    Python code keeps snake_case attributes: ``OrderCreated(order_id=...)`` is sent as
    ``{"OrderId": ...}`` and read back from either spelling.
    """

    model_config = ConfigDict(alias_generator=to_pascal, populate_by_name=True)


@dataclass(frozen=True)
class SerializedEvent:
    """An event as bytes, with what a reader needs to turn it back into the event."""

    body: bytes
    content_type: str
    event_type: str


def event_type_name(event: object, explicit: str | None = None) -> str:
    """The event type name: ``explicit``, else the class's ``__event_type__``, else its name."""
    if explicit:
        return explicit
    declared = getattr(type(event), "__event_type__", None)
    return declared if isinstance(declared, str) and declared else type(event).__name__


def serialize(event: object, *, event_type: str | None = None) -> SerializedEvent:
    """Turn ``event`` into bytes and a content type; JSON for anything but ``bytes``/``str``."""
    name = event_type_name(event, event_type)
    if isinstance(event, (bytes, bytearray, memoryview)):
        return SerializedEvent(bytes(event), BINARY, name)
    if isinstance(event, str):
        return SerializedEvent(event.encode("utf-8"), TEXT, name)
    if isinstance(event, BaseModel):
        return SerializedEvent(event.model_dump_json(by_alias=True).encode(), JSON, name)
    if dataclasses.is_dataclass(event) or isinstance(event, (dict, list, tuple)):
        adapter = _adapter(type(event))
        return SerializedEvent(adapter.dump_json(event, by_alias=True), JSON, name)
    raise TypeError(
        f"cannot serialize {type(event).__name__}: publish a pydantic model, a dataclass, "
        "a dict or list, bytes or str"
    )


def deserialize(
    body: bytes,
    as_type: type[T],
    *,
    content_type: str | None = None,
    message_id: str | None = None,
    entity: str | None = None,
    blob_path: str | None = None,
) -> T:
    """Turn a payload back into ``as_type``; typed errors say what was wrong with which message."""
    where = {"message_id": message_id, "entity": entity, "blob_path": blob_path}
    if as_type is bytes:
        return cast(T, bytes(body))
    if as_type is str:
        try:
            return cast(T, body.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise EventDecodeError(f"payload is not UTF-8 text ({error.reason})", **where) from None
    try:
        return cast(T, _adapter(as_type).validate_json(body))
    except ValidationError as error:
        if any(e["type"] == "json_invalid" for e in error.errors()):
            raise EventDecodeError(
                f"payload is not valid JSON (content type {content_type or 'unset'})",
                **where,
                hint="The sender must publish UTF-8 JSON for typed events.",
            ) from None
        raise InvalidEventError(
            f"payload does not fit {getattr(as_type, '__name__', as_type)}: " + _summarise(error),
            **where,
        ) from None


def _summarise(error: ValidationError, limit: int = 5) -> str:
    # Field locations and messages only: input values could be large or sensitive.
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False)
    ]
    more = f" (+{len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(as_type: Any) -> TypeAdapter[Any]:
    # Building a TypeAdapter compiles a validator: do it once per type.
    adapter = _ADAPTERS.get(as_type)
    if adapter is None:
        adapter = _ADAPTERS[as_type] = TypeAdapter(as_type)
    return adapter
