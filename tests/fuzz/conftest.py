"""The fuzz tests share their grammar and harness (``fuzz_grammar``, ``fuzz_harness``) with
``benchmarks/fuzz_receive.py``; both import them from this folder."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
