"""The long fuzz run of the receive path (issue 16): at least 10,000 generated batches.

Run by hand: ``.venv/bin/python benchmarks/fuzz_receive.py [--examples 10000] [--sync 1000]
[--urls 100000] [--seed N]``. It starts the emulator and Azurite itself, then runs the suite's
properties (``tests/fuzz``) with many more cases: the async client on ``--examples`` batches
(each 2 to 6 messages, at least one good), the sync client on ``--sync`` batches, and the pure
URL check on ``--urls`` URLs. It prints what was fuzzed, the requests the canary (the stand-in
for every untrusted host) received, the slowest message and receive, and the largest traced
memory of one batch's receive; on a violation, the minimal failing example hypothesis found.
Exits 1 when any invariant failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

from fuzz_harness import (  # noqa: E402
    AS_TYPES,
    MAX_SECONDS_PER_MESSAGE,
    MAX_TRACED_BYTES,
    Rig,
    batches,
    run_example,
    running_rig,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def long_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def attempt(name: str, run: Callable[[], None], failures: dict[str, str]) -> float:
    started = time.monotonic()
    try:
        run()
    except BaseException as error:  # report every property, then exit non-zero
        if isinstance(error, KeyboardInterrupt):
            raise
        failures[name] = "".join(traceback.format_exception(error))
    return time.monotonic() - started


class Survey:
    """Violations tallied by kind (the assertion's first words), with the smallest batch that
    showed each: what ``--survey`` prints instead of stopping at the first violation."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}
        self.smallest: dict[str, tuple[int, str]] = {}

    def add(self, error: AssertionError, specs: list[Any], extra: str) -> None:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        kind = " ".join(text.split()[:8])
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        size = sum(len(repr(spec)) for spec in specs)
        if kind not in self.smallest or size < self.smallest[kind][0]:
            self.smallest[kind] = (size, f"{text}\n  {extra}\n  " + "\n  ".join(map(repr, specs)))

    def print(self) -> None:
        for kind, count in sorted(self.kinds.items(), key=lambda item: -item[1]):
            print(f"\n--- {count} x {kind}\n{self.smallest[kind][1]}")


def fuzz_receive(
    rig: Rig, examples: int, *, sync: bool, seed: int | None, survey: Survey | None = None
) -> Callable[[], None]:
    @long_settings(examples)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        specs = data.draw(batches(rig.targets, max_hostile=2 if sync else 4), label="batch")
        as_type = data.draw(st.sampled_from(AS_TYPES), label="as_type")
        prefetch = sync or data.draw(st.booleans(), label="prefetch")
        delete = data.draw(st.booleans(), label="delete_after_complete")
        if rig.stats.examples and rig.stats.examples % 500 == 0:
            print(f"... {rig.stats.examples} batches", file=sys.stderr, flush=True)
        try:
            run_example(
                rig,
                specs,
                sync=sync,
                as_type=as_type,
                prefetch=prefetch,
                delete_after_complete=delete,
            )
        except AssertionError as error:
            if survey is None:
                raise
            extra = f"sync={sync} as_type={as_type.__name__} prefetch={prefetch} delete={delete}"
            survey.add(error, specs, extra)

    return prop if seed is None else hypothesis_seed(seed)(prop)


def fuzz_urls(urls: int) -> list[tuple[str, Callable[[], None]]]:
    """The suite's pure URL properties, with ``urls`` cases each (the long profile)."""
    os.environ["CLAIMCHECK_TEST_FUZZ_PROFILE"] = "long"
    os.environ["CLAIMCHECK_TEST_FUZZ_EXAMPLES"] = str(urls)
    import test_url_confinement as pure

    names = (
        "test_hostile_urls_are_refused_or_confined",
        "test_blob_paths_under_the_trusted_container_are_confined",
        "test_urls_of_other_ports_and_hosts_are_refused",
        "test_the_url_check_only_ever_raises_typed_errors",
        "test_every_url_our_publisher_makes_maps_back_to_its_blob",
    )
    return [(name, getattr(pure, name)) for name in names]


def table(rows: list[tuple[str, str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"{label:<{width}}  {value}")
        return
    out = Table(title="Receive-path fuzzing (issue 16)")
    out.add_column("figure")
    out.add_column("value", justify="right")
    for label, value in rows:
        out.add_row(label, value)
    Console().print(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="async batches")
    parser.add_argument("--sync", type=int, default=1_000, help="sync batches")
    parser.add_argument("--urls", type=int, default=100_000, help="URLs per pure property")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--survey",
        action="store_true",
        help="tally every violation with its smallest batch instead of stopping at the first",
    )
    args = parser.parse_args()
    os.environ["CLAIMCHECK_CONFIG_DIR"] = tempfile.mkdtemp(prefix="fuzz-config-")
    # The SDK logs every message it cannot encode (the generator makes some on purpose).
    logging.getLogger("azure").setLevel(logging.CRITICAL)

    from claimcheck_bus.emulator import Emulator
    from claimcheck_bus.testing.azurite import running_azurite
    from claimcheck_bus.testing.servicebus import default_test_config

    failures: dict[str, str] = {}
    survey = Survey() if args.survey else None
    timings: dict[str, float] = {}
    for name, run in fuzz_urls(args.urls) if args.urls else []:
        timings[name] = attempt(name, run, failures)
    with (
        Emulator(default_test_config()) as emulator,
        running_azurite([ROOT]) as azurite,
        running_rig(emulator, azurite) as rig,
    ):
        timings["async receive"] = attempt(
            "async receive",
            fuzz_receive(rig, args.examples, sync=False, seed=args.seed, survey=survey),
            failures,
        )
        async_stats = (rig.stats.examples, rig.stats.messages)
        if args.sync:
            timings["sync receive"] = attempt(
                "sync receive",
                fuzz_receive(rig, args.sync, sync=True, seed=args.seed, survey=survey),
                failures,
            )
        stats = rig.stats
        canary = len(rig.canary.requests)

    for name, text in failures.items():
        print(f"\n===== {name}: FAILED =====\n{text}")
    if survey is not None:
        survey.print()
        if survey.kinds:
            failures["survey"] = f"{sum(survey.kinds.values())} violating batches"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(stats.errors_by_type.items()))
    table(
        [
            ("URLs fuzzed (pure check, per property x 5)", f"{args.urls:,}"),
            ("batches received (async + sync)", f"{stats.examples:,}"),
            ("  of which async", f"{async_stats[0]:,}"),
            ("messages received", f"{stats.messages:,}"),
            ("  async", f"{async_stats[1]:,}"),
            ("messages the SDK/broker refused to send", f"{stats.unsendable:,}"),
            ("events", f"{stats.events:,}"),
            ("typed errors (MessageError)", f"{stats.typed_errors:,}"),
            ("errors by type", outcomes or "none"),
            ("requests to the canary (untrusted hosts)", f"{canary}"),
            (
                "slowest message (.data / load)",
                f"{stats.slowest_message:.3f} s (bound {MAX_SECONDS_PER_MESSAGE:.0f} s)",
            ),
            ("slowest receive() call", f"{stats.slowest_receive:.3f} s"),
            (
                "peak traced memory of one batch's receive",
                f"{stats.traced_peak / 2**20:.1f} MiB (bound {MAX_TRACED_BYTES / 2**20:.0f} MiB)",
            ),
            *((f"time: {name}", f"{seconds:.0f} s") for name, seconds in timings.items()),
            ("invariant violations", ", ".join(failures) or "none"),
        ]
    )
    return 1 if failures or canary else 0


if __name__ == "__main__":
    sys.exit(main())
