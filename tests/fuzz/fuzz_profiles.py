"""Hypothesis profiles of the fuzz runs, applied per test (never loaded globally, so that the
rest of the suite keeps its own settings).

``quick`` is what the suite runs: derandomized (the same cases on every machine, so CI is
reproducible), no example database, no deadline (the receive path's time is asserted by the
tests themselves). ``long`` is the benchmark's: random, many cases. ``CLAIMCHECK_TEST_FUZZ_PROFILE``
picks one for the suite, ``CLAIMCHECK_TEST_FUZZ_EXAMPLES`` overrides the number of cases.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
    "print_blob": True,
}
settings.register_profile("claimcheck-fuzz-quick", derandomize=True, **_COMMON)
settings.register_profile("claimcheck-fuzz-long", derandomize=False, **_COMMON)


def fuzz_settings(
    quick_examples: int, long_examples: int | None = None, *, quick_shrink: bool = True
) -> settings:
    """The settings of one fuzz test: ``quick_examples`` cases in the suite.

    ``quick_shrink=False`` skips shrinking in the quick profile: for the end-to-end tests,
    where each failing case costs a second of SDK link set-up, shrinking one failure takes
    minutes. Their batches are small anyway; the long run shrinks.
    """
    profile = os.environ.get("CLAIMCHECK_TEST_FUZZ_PROFILE", "quick")
    parent = settings.get_profile(f"claimcheck-fuzz-{profile}")
    examples = quick_examples if profile == "quick" else (long_examples or quick_examples * 100)
    override = os.environ.get("CLAIMCHECK_TEST_FUZZ_EXAMPLES")
    phases = tuple(Phase)
    if profile == "quick" and not quick_shrink:
        phases = tuple(phase for phase in Phase if phase not in (Phase.shrink, Phase.explain))
    return settings(parent, max_examples=int(override) if override else examples, phases=phases)
