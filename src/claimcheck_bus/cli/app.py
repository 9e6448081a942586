"""The ``claimcheck-bus`` click group: every command group registered in one place."""

from __future__ import annotations

from collections.abc import Sequence

import click

from claimcheck_bus import __version__
from claimcheck_bus.cli import config, dlq, doctor, operate, sweep
from claimcheck_bus.cli.common import run_app


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="claimcheck-bus")
def group() -> None:
    """Operate claimcheck-bus: configuration, diagnosis, dead letters, orphaned payloads.

    Every command reads the same settings as the library (claimcheck*.toml, .env,
    CLAIMCHECK_* variables; --env and --config-dir choose which), prints a table (--json for
    JSON), never prints a secret, and exits 0 when done, 1 when a check or part of the work
    failed, 2 on a usage or configuration error.
    """


@group.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def emulator(args: tuple[str, ...]) -> None:
    """Run the local Service Bus emulator (claimcheck-bus emulator --help)."""
    from claimcheck_bus.emulator.__main__ import main as emulator_main

    raise SystemExit(emulator_main(list(args)))


group.add_command(config.config)
group.add_command(doctor.doctor)
group.add_command(dlq.dlq)
group.add_command(sweep.sweep)
group.add_command(operate.peek)
group.add_command(operate.publish)


class _App:
    def run(self, args: Sequence[str]) -> int:
        return run_app(group, args)


app = _App()
