"""``claimcheck-bus doctor``: check settings, Service Bus, storage and clocks, each with a fix."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import click
import httpx

from claimcheck_bus import BusSettings, ClaimCheckBusError
from claimcheck_bus.cli.common import (
    EXIT_FAILED,
    Options,
    blob_service,
    common_options,
    config_dir_of,
    console,
    describe_error,
    emit_json,
    load_settings,
    servicebus_client,
    table,
)
from claimcheck_bus.cli.library import AzureBlobPayloadStore, payload_metadata, sas_expiry
from claimcheck_bus.settings import configuration_warnings

#: Clock skew beyond which SAS start times and delegation keys misbehave.
MAX_SKEW = timedelta(minutes=5)
OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
FIX_NAMESPACE = (
    "Check service_bus.connection_string / fully_qualified_namespace, the network, and the "
    "key or role (Azure Service Bus Data Sender)."
)
FIX_STORAGE = (
    "Check claim_check.blob_storage (URL, key or the identity's 'Storage Blob Data "
    "Contributor' role) and the network."
)
FIX_SAS = (
    "The credentials must sign a read SAS: an account key, or the 'Storage Blob Delegator' "
    "role for user-delegation."
)


@dataclass(frozen=True)
class Check:
    """One check's result, with what to do about it."""

    name: str
    status: str
    detail: str
    fix: str = ""


@click.command()
@common_options
@click.option("--queue", "-q", "queues", multiple=True, help="Also check this queue (repeatable).")
@click.option("--topic", "-t", "topics", multiple=True, help="Also check this topic (repeatable).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds for each network check.")
def doctor(
    options: Options, queues: tuple[str, ...], topics: tuple[str, ...], timeout: float
) -> int:
    """Check the setup in order and say how to fix what fails.

    Settings valid; namespace reachable and credentials accepted; each configured or named
    entity exists and its maximum message size; storage reachable, container present or
    creatable, a SAS signed and read back; clock skew against storage; trusted endpoints.
    Exits 1 when any check fails.
    """
    checks: list[Check] = []
    with config_dir_of(options):
        warnings = configuration_warnings(env=options.env)
    try:
        settings = load_settings(options)
    except click.ClickException as error:
        checks.append(
            Check(
                "settings",
                FAIL,
                error.format_message(),
                "Fix the settings named above (claimcheck-bus config show).",
            )
        )
        return _report(checks, options)
    detail = f"env {settings.env}" + (f"; {len(warnings)} warning(s)" if warnings else "")
    checks.append(
        Check("settings", WARN if warnings else OK, detail, "; ".join(str(w) for w in warnings))
    )
    checks.extend(_servicebus_checks(settings, queues, topics, timeout))
    storage_checks, server_time = _storage_checks(settings, timeout)
    checks.extend(storage_checks)
    checks.append(clock_check(server_time))
    endpoints = settings.claim_check.trusted_blob_endpoints
    checks.append(
        Check(
            "trusted endpoints",
            OK,
            f"{len(endpoints)} well-formed"
            if endpoints
            else "none configured (own container only)",
        )
    )
    return _report(checks, options)


def _report(checks: list[Check], options: Options) -> int:
    if options.as_json:
        emit_json(
            {"ok": all(c.status != FAIL for c in checks), "checks": [c.__dict__ for c in checks]}
        )
    else:
        console().print(
            table(
                "claimcheck-bus doctor",
                ["check", "status", "detail", "fix"],
                [(c.name, c.status, c.detail, c.fix) for c in checks],
            )
        )
    return EXIT_FAILED if any(c.status == FAIL for c in checks) else 0


def _servicebus_checks(
    settings: BusSettings, queues: tuple[str, ...], topics: tuple[str, ...], timeout: float
) -> list[Check]:
    entities = [
        (q, "queue")
        for q in dict.fromkeys(
            [
                *(
                    [settings.service_bus.default_queue_name]
                    if settings.service_bus.default_queue_name
                    else []
                ),
                *queues,
            ]
        )
    ]
    entities += [(t, "topic") for t in dict.fromkeys(topics)]
    if not entities:
        return [
            Check(
                "service bus",
                SKIP,
                "no entity configured or named",
                "Name one with --queue or --topic, or set service_bus.default_queue_name.",
            )
        ]
    checks = []
    reachable = True
    with servicebus_client(settings, retries=0) as client:
        for name, kind in entities:
            if not reachable:
                checks.append(Check(f"{kind} {name}", SKIP, "namespace unreachable"))
                continue
            get = client.get_topic_sender if kind == "topic" else client.get_queue_sender
            try:
                with get(name, socket_timeout=timeout) as sender:
                    size = sender.create_message_batch().max_size_in_bytes
                checks.append(Check(f"{kind} {name}", OK, f"exists; largest message {size} bytes"))
            except Exception as error:  # each SDK failure becomes a check result
                text = describe_error(error)
                missing = "NotFound" in text or "not found" in text.lower()
                if not missing:
                    reachable = False
                checks.append(
                    Check(
                        f"{kind} {name}",
                        FAIL,
                        text,
                        f"Create the {kind} or fix its name." if missing else FIX_NAMESPACE,
                    )
                )
    return checks


def _storage_checks(settings: BusSettings, timeout: float) -> tuple[list[Check], datetime | None]:
    cc = settings.claim_check
    storage = cc.blob_storage
    if storage.connection_string is None and not storage.account_url:
        status = SKIP if not cc.enabled else FAIL
        return [
            Check(
                "storage",
                status,
                "no storage account configured",
                "Set claim_check.blob_storage.connection_string or account_url.",
            )
        ], None
    checks: list[Check] = []
    service = blob_service(settings, retries=0)
    with service:
        container = service.get_container_client(cc.container_name)
        try:
            exists = container.exists(timeout=timeout)
        except Exception as error:  # reachability and credentials in one request
            return [
                Check(
                    "storage",
                    FAIL,
                    describe_error(error),
                    FIX_STORAGE,
                )
            ], None
        checks.append(Check("storage", OK, f"reachable at {_endpoint(service)}"))
        if not exists:
            try:
                container.create_container(timeout=timeout)
                checks.append(Check("container", OK, f"{cc.container_name} created"))
            except Exception as error:  # 403: may write blobs but not create containers
                checks.append(
                    Check(
                        "container",
                        FAIL,
                        f"{cc.container_name} missing, cannot create it: {describe_error(error)}",
                        "Create the container, or grant the identity rights to.",
                    )
                )
                return checks, None
        else:
            checks.append(Check("container", OK, f"{cc.container_name} exists"))
    signed, server_time = _sas_round_trip(settings, timeout)
    checks.append(signed)
    return checks, server_time


def _endpoint(service: Any) -> str:
    return str(service.url).split("?", 1)[0].rstrip("/")


def _sas_round_trip(settings: BusSettings, timeout: float) -> tuple[Check, datetime | None]:
    """Upload a probe with the library's store, read it back through its SAS, delete it."""
    name = f"_doctor/probe-{uuid.uuid4().hex}.json"
    body = b'{"probe": true}'
    now = datetime.now(timezone.utc)
    try:
        with AzureBlobPayloadStore.from_settings(settings.claim_check, retry_total=0) as store:
            stored = store.upload(
                name,
                body,
                content_type="application/json",
                metadata=payload_metadata(
                    "doctor", "Probe", "_doctor", published_at=now, expires_at=now
                ),
                sas_expires_on=sas_expiry(now, 0.25, None, store.max_sas_lifetime),
            )
            try:
                kind = "account-key" if store.signs_with_account_key else "user-delegation"
                response = httpx.get(stored.url, timeout=timeout)
            finally:
                store.delete(name)
    except (ClaimCheckBusError, httpx.HTTPError) as error:
        return Check(
            "sas",
            FAIL,
            describe_error(error),
            FIX_SAS,
        ), None
    server_time = _date_of(response.headers.get("date"))
    if response.status_code != 200 or response.content != body:
        return Check(
            "sas",
            FAIL,
            f"{kind} SAS read back gave HTTP {response.status_code}",
            "Check the clock, the account key, and that consumers can reach this endpoint.",
        ), server_time
    return Check("sas", OK, f"{kind} SAS signed and read back"), server_time


def _date_of(header: str | None) -> datetime | None:
    if not header:
        return None
    try:
        return parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None


def clock_check(
    server_time: datetime | None, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
) -> Check:
    if server_time is None:
        return Check("clock", SKIP, "no server time (storage not reached)")
    skew = now() - server_time
    if abs(skew) > MAX_SKEW:
        return Check(
            "clock",
            FAIL,
            f"local clock is {skew.total_seconds():+.0f} s off storage's",
            "Synchronise the clock (NTP): SAS and delegation keys tolerate 5 minutes.",
        )
    return Check(
        "clock", OK, f"{skew.total_seconds():+.0f} s against storage (HTTP Date, 1 s resolution)"
    )
