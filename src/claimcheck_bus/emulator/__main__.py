"""Command line: run the Service Bus emulator until SIGINT/SIGTERM.

`python -m claimcheck_bus.emulator --config Config.json`; prints the connection string on one
line when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from claimcheck_bus.emulator.config import ConfigError, EmulatorConfig, load_config
from claimcheck_bus.emulator.server import (
    DEFAULT_KEY,
    DEFAULT_KEY_NAME,
    DEFAULT_PORT,
    MAX_MESSAGE_SIZE_LIMIT,
    STANDARD_MAX_MESSAGE_SIZE,
    AmqpServer,
    connection_string,
    serve,
)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The emulator's command-line options."""
    parser = argparse.ArgumentParser(
        prog="claimcheck-bus emulator",
        description="A Docker-free Azure Service Bus emulator for the azure-servicebus SDK.",
        formatter_class=_HelpWithDefaults,
    )
    parser.add_argument(
        "--config",
        help="the official emulator's Config.json; without it: queue orders, topic events "
        "with subscription all",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port (samples/claimcheck.development.toml expects it); 0 picks a free one",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=STANDARD_MAX_MESSAGE_SIZE,
        help="largest message in bytes (262144 = Standard tier; up to 104857600)",
    )
    parser.add_argument("--data-dir", help="keep unsettled messages across restarts in DIR")
    parser.add_argument("--key-name", default=DEFAULT_KEY_NAME, help="shared access key name")
    parser.add_argument(
        "--key",
        default=DEFAULT_KEY,
        help="shared access key (the default is the official emulator's public one)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.max_message_size <= MAX_MESSAGE_SIZE_LIMIT:
        parser.error(f"--max-message-size must be between 1 and {MAX_MESSAGE_SIZE_LIMIT}")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    try:
        config = load_config(args.config) if args.config else EmulatorConfig.default()
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # A wildcard bind is reached through the loopback address.
    shown_host = "127.0.0.1" if args.host in ("", "0.0.0.0", "::") else args.host  # noqa: S104

    def ready(server: AmqpServer) -> None:
        print(connection_string(shown_host, server.port, args.key_name, args.key), flush=True)

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await serve(
            config,
            host=args.host,
            port=args.port,
            max_message_size=args.max_message_size,
            data_dir=args.data_dir,
            key_name=args.key_name,
            key=args.key,
            ready=ready,
        )

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
