"""The ``claimcheck-bus`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from claimcheck_bus._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``claimcheck-bus`` command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="claimcheck-bus", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the order/billing demo on local defaults")
    parser.parse_args(argv)
    print(
        "The demo arrives with the samples (order_api, billing_worker); "
        "until then `make test` shows what works."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
