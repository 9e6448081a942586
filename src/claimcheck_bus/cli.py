"""The ``claimcheck-bus`` command line: ``claimcheck-bus emulator ...`` runs the local
Service Bus emulator (the library itself needs no command)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from claimcheck_bus._version import __version__

_USAGE = """usage: claimcheck-bus [--version] COMMAND ...

commands:
  emulator    run the local AMQP 1.0 Service Bus emulator (claimcheck-bus emulator --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``claimcheck-bus`` command line; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        print(__version__)
        return 0
    if args[:1] == ["emulator"]:
        # Imported here: the client library never loads the emulator.
        from claimcheck_bus.emulator.__main__ import main as emulator_main

        return emulator_main(args[1:])
    print(_USAGE, file=sys.stdout if args[:1] in (["-h"], ["--help"]) else sys.stderr)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
