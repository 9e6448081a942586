"""``claimcheck-bus config show``: the effective settings, masked, with where each came from."""

from __future__ import annotations

from typing import Any

import click
from pydantic import SecretStr

from claimcheck_bus.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Options,
    common_options,
    config_dir_of,
    console,
    emit_json,
    load_settings,
    table,
    warn,
)
from claimcheck_bus.cli.decisions import flatten, mask_value
from claimcheck_bus.settings import (
    BusSettings,
    ConfigWarning,
    config_dir,
    configuration_warnings,
    setting_names,
)


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command()
@common_options
@click.option("--sources", is_flag=True, help="Add where each value came from.")
def show(options: Options, sources: bool) -> int:
    """The effective settings (secrets masked) and warnings about likely mistakes.

    Warns about an environment with no file, a configuration folder that does not exist,
    CLAIMCHECK_* variables and TOML keys that match no setting (with file, line and the
    nearest valid name). Exits 2 when the settings are invalid, 1 when there are warnings.
    """
    with config_dir_of(options):
        warnings = configuration_warnings(env=options.env)
        folder = str(config_dir())
    try:
        settings = load_settings(options)
    except click.ClickException as error:
        # The error already names the mistakes that made loading fail.
        _report_warnings([w for w in warnings if str(w) not in error.format_message()], options)
        if options.as_json:
            emit_json(
                {
                    "valid": False,
                    "error": error.format_message(),
                    "warnings": [_warning_json(w) for w in warnings],
                }
            )
            return EXIT_USAGE
        raise
    rows = shown_settings(settings)
    if options.as_json:
        emit_json(
            {
                "valid": True,
                "config_dir": folder,
                "env": settings.env,
                "settings": {
                    name: ({"value": value, "source": source} if sources else value)
                    for name, value, source in rows
                },
                "warnings": [_warning_json(w) for w in warnings],
            }
        )
    else:
        columns = ["setting", "value", "source"] if sources else ["setting", "value"]
        console().print(
            table(
                f"claimcheck-bus settings (env {settings.env}, folder {folder})",
                columns,
                [(name, _text(value), source)[: len(columns)] for name, value, source in rows],
            )
        )
        _report_warnings(warnings, options)
    return EXIT_FAILED if warnings else 0


def shown_settings(settings: BusSettings) -> list[tuple[str, Any, str]]:
    """Each leaf setting as (dotted name, masked value, source)."""
    sources = settings.value_sources()
    values = flatten(_raw(settings))
    rows = []
    for name in (n for n, section in setting_names().items() if not section):
        value = values.get(name)
        if isinstance(value, SecretStr):
            value = mask_value(name, value.get_secret_value(), secret=True)
        else:
            value = mask_value(name, value, secret=False)
        rows.append((name, value, sources.get(name, "default")))
    return rows


def _raw(model: Any) -> dict[str, Any]:
    # Attribute by attribute: model_dump would hide SecretStr values we mask ourselves.
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        out[name] = _raw(value) if hasattr(type(value), "model_fields") else value
    return out


def _text(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return "***"
    return str(value)


def _warning_json(warning: ConfigWarning) -> dict[str, Any]:
    return {"where": warning.where, "problem": warning.problem, "suggestion": warning.suggestion}


def _report_warnings(warnings: list[ConfigWarning], options: Options) -> None:
    for warning in warnings:
        warn(str(warning))
