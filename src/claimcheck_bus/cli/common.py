"""What every command shares: settings options, output (table or JSON), errors, clients."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from claimcheck_bus import BusSettings
from claimcheck_bus.claim_check.entities import Entity, resolve_entity
from claimcheck_bus.cli.decisions import describe_duration, parse_duration
from claimcheck_bus.settings import ENV_PREFIX, redact_secrets

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes (see the package docstring).
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(click.ClickException):
    """A failure the command explains itself; printed redacted, exit code 1 or 2."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(redact_secrets(message))
        self.code = exit_code

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """1 for a failure, 2 for a usage or configuration error."""
        return self.code

    def show(self, file: Any = None) -> None:
        """Print ``error: ...`` on stderr."""
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass
class Options:
    """The options every command takes."""

    env: str | None
    config_dir: str | None
    as_json: bool


def common_options(command: F) -> F:
    """Adds ``--env``, ``--config-dir`` and ``--json`` (the last becomes ``options``)."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.option(
        "--config-dir",
        type=click.Path(file_okay=False),
        help=f"Folder of claimcheck*.toml and .env [default: {ENV_PREFIX}CONFIG_DIR or cwd].",
    )
    @click.option(
        "--env", help=f"Environment whose claimcheck.ENV.toml applies [default: {ENV_PREFIX}ENV]."
    )
    @functools.wraps(command)
    def wrapper(env: str | None, config_dir: str | None, as_json: bool, **kwargs: Any) -> Any:
        return command(options=Options(env, config_dir, as_json), **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def config_dir_of(options: Options) -> Iterator[None]:
    """``--config-dir`` in force (the library reads the folder from the environment)."""
    if options.config_dir is None:
        yield
        return
    variable = ENV_PREFIX + "CONFIG_DIR"
    before = os.environ.get(variable)
    os.environ[variable] = options.config_dir
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before


def load_settings(options: Options) -> BusSettings:
    """The library's settings as ``--env``/``--config-dir`` select them; exit 2 if invalid."""
    with config_dir_of(options):
        try:
            return BusSettings(env=options.env) if options.env else BusSettings()
        except ValueError as error:
            raise CommandError(f"invalid configuration:\n{error}", EXIT_USAGE) from None


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); wide when not a terminal so tables do not wrap,
    unless ``COLUMNS`` says how wide."""
    stream = sys.stderr if stderr else sys.stdout
    natural = stream.isatty() or "COLUMNS" in os.environ
    return Console(file=stream, width=None if natural else 140, highlight=False)


def terminal_progress() -> Progress:
    """A progress display on stderr, on a terminal only: redirected output gets the report,
    not a bar's leftovers."""
    err = console(stderr=True)
    return Progress(console=err, transient=True, disable=not err.is_terminal)


def emit_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (times in ISO 8601)."""
    click.echo(json.dumps(data, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A rich table of plain values (None shown as empty)."""
    result = Table(title=title, title_justify="left", show_lines=False)
    for index, column in enumerate(columns):
        # The first column names the row: keep it whole, fold the others.
        result.add_column(column, overflow="fold", no_wrap=index == 0)
    for row in rows:
        result.add_row(*("" if value is None else _cell(value) for value in row))
    return result


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return describe_duration(value)
    return str(value)


def warn(text: str) -> None:
    """A warning on stderr."""
    click.echo(f"warning: {redact_secrets(text)}", err=True)


def duration_option(name: str, help_text: str, default: str | None = None) -> Callable[[F], F]:
    """An option taking ``30s``/``15m``/``2h``/``7d``/``1w``, parsed into a timedelta."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None

    return click.option(
        name, callback=convert, default=default, show_default=default is not None, help=help_text
    )


def entity_options(command: F) -> F:
    """``--queue`` | ``--topic`` with ``--subscription`` (default: the settings' queue)."""
    command = click.option("--subscription", "-s", help="Subscription of --topic.")(command)
    command = click.option("--topic", "-t", help="A topic (with --subscription to read).")(command)
    command = click.option(
        "--queue", "-q", help="A queue [default: service_bus.default_queue_name]."
    )(command)
    return command


def entity_of(
    settings: BusSettings,
    queue: str | None,
    topic: str | None,
    subscription: str | None,
    *,
    receiving: bool,
) -> Entity:
    """The entity the options name; usage error (2) when they do not name one."""
    try:
        return resolve_entity(
            settings, queue=queue, topic=topic, subscription=subscription, receiving=receiving
        )
    except ValueError as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def servicebus_client(settings: BusSettings, *, retries: int = 3) -> Any:
    """An SDK ``ServiceBusClient`` for the settings' namespace (key or azure-identity)."""
    from azure.servicebus import ServiceBusClient

    sb = settings.service_bus
    if sb.connection_string is not None:
        return ServiceBusClient.from_connection_string(
            sb.connection_string.get_secret_value(), retry_total=retries
        )
    from azure.identity import DefaultAzureCredential

    return ServiceBusClient(
        str(sb.fully_qualified_namespace), DefaultAzureCredential(), retry_total=retries
    )


def blob_service(settings: BusSettings, *, retries: int = 3) -> Any:
    """An SDK ``BlobServiceClient`` for the settings' storage account; exit 2 without one."""
    from azure.storage.blob import BlobServiceClient

    storage = settings.claim_check.blob_storage
    if storage.connection_string is not None:
        return BlobServiceClient.from_connection_string(
            storage.connection_string.get_secret_value(), retry_total=retries
        )
    if storage.account_url:
        from azure.identity import DefaultAzureCredential

        return BlobServiceClient(
            storage.account_url, credential=DefaultAzureCredential(), retry_total=retries
        )
    raise CommandError("no storage account configured (claim_check.blob_storage)", EXIT_USAGE)


def describe_error(error: BaseException) -> str:
    """An exception as one line, secrets redacted (SDK messages may quote URLs)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return redact_secrets(f"{type(error).__name__}: {text}" if text else type(error).__name__)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    # The commands report what matters themselves; SDK chatter on stderr would bury it, the
    # library's settings warnings are printed by `config show` and `doctor`, and a refused
    # SAS is shown by `dlq show` itself. Restored afterwards: main() may run in-process.
    loggers = [logging.getLogger(name) for name in ("azure", "uamqp", "claimcheck_bus")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    added = not root.handlers
    if added:
        root.addHandler(handler)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if added:
            root.removeHandler(handler)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


def run_app(group: click.Group, args: Sequence[str]) -> int:
    """Run ``group`` on ``args`` and return the exit code (click's own rules, plus 130)."""
    try:
        with _quiet_logging():
            result = group.main(list(args), prog_name="claimcheck-bus", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as error:
        error.show()
        return int(error.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except SystemExit as exited:
        return exited.code if isinstance(exited.code, int) else (0 if exited.code is None else 1)
    return result if isinstance(result, int) else 0
