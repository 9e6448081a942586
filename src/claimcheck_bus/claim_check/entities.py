"""Which entity a call means, and how to reach the namespace (pure, from settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from claimcheck_bus.settings import BusSettings, env_var


@dataclass(frozen=True)
class Entity:
    """A queue, a topic, or a topic's subscription."""

    name: str
    kind: Literal["queue", "topic"]
    subscription: str | None = None

    @property
    def path(self) -> str:
        """``orders`` or ``events/Subscriptions/billing``, as Service Bus names it."""
        if self.subscription:
            return f"{self.name}/Subscriptions/{self.subscription}"
        return self.name


def resolve_entity(
    settings: BusSettings,
    *,
    queue: str | None = None,
    topic: str | None = None,
    subscription: str | None = None,
    receiving: bool = False,
) -> Entity:
    """The entity named by a call, or the settings' default queue; clear errors otherwise."""
    if queue and topic:
        raise ValueError("name either queue= or topic=, not both")
    if subscription and not topic:
        raise ValueError("subscription= needs topic=")
    if topic:
        if receiving and not subscription:
            raise ValueError(f"receiving from topic {topic!r} needs subscription=")
        return Entity(topic, "topic", subscription if receiving else None)
    name = queue or settings.service_bus.default_queue_name
    if not name:
        raise ValueError(
            "no entity named: pass queue= or topic=, or set service_bus.default_queue_name "
            f"({env_var('service_bus.default_queue_name')})"
        )
    return Entity(name, "queue")


def default_credential() -> Any:
    """azure-identity's ``DefaultAzureCredential``, for namespaces and accounts without keys."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def default_async_credential() -> Any:
    """The ``aio`` twin of :func:`default_credential`."""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()
