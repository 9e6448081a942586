"""``python -m claimcheck_bus.cli``: the same as the ``claimcheck-bus`` command."""

import sys

from claimcheck_bus.cli import main

sys.exit(main())
