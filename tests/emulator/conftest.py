"""The emulator tests import their shared fake clock (broker_clock.py) from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
