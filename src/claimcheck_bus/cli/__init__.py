"""The ``claimcheck-bus`` command line: operators' commands and the local emulator.

``claimcheck-bus emulator ...`` hands its arguments to the emulator untouched (it owns its
options and ``--help``) and needs nothing beyond the library. The other commands
(``config``, ``doctor``, ``dlq``, ``sweep``, ``peek``, ``publish``) need the ``cli`` extra:
``pip install 'claimcheck-bus[cli]'``.

Exit codes: 0 done; 1 a check or part of the work failed (the output says which); 2 a usage
or configuration error; 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``claimcheck-bus`` command line; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["emulator"]:
        # Before click is imported: the emulator keeps working without the cli extra.
        from claimcheck_bus.emulator.__main__ import main as emulator_main

        return emulator_main(args[1:])
    try:
        from claimcheck_bus.cli.app import app
    except ImportError as missing:  # the cli extra is not installed
        print(
            f"claimcheck-bus: this command needs the 'cli' extra ({missing.name} is missing): "
            "pip install 'claimcheck-bus[cli]'. `claimcheck-bus emulator` works without it.",
            file=sys.stderr,
        )
        return 2
    return app.run(args)


if __name__ == "__main__":
    sys.exit(main())
