"""The whole receive path fuzzed end to end: generated batches of hostile and good messages
through the emulator (real azure-servicebus SDK) and Azurite, received by both clients.

The invariants are in ``fuzz_harness``; the long run is ``benchmarks/fuzz_receive.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fuzz_grammar import Body, amqp_long
from fuzz_harness import (
    AS_TYPES,
    DECOY_ELSEWHERE,
    DECOY_IN_OUR_CONTAINER,
    Rig,
    Spec,
    batches,
    run_example,
    running_rig,
)
from fuzz_profiles import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.testing.azurite import Azurite


@pytest.fixture(scope="module")
def rig(
    servicebus: Any, azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    with pytest.MonkeyPatch.context() as env:
        # Settings are built from keywords only: no project file or variable may leak in.
        env.setenv("CLAIMCHECK_CONFIG_DIR", str(tmp_path_factory.mktemp("fuzz-config")))
        with running_rig(servicebus, azurite) as running:
            yield running


@fuzz_settings(25, 10_000, quick_shrink=False)
@given(data=st.data())
def test_async_receive_of_hostile_batches(rig: Rig, data: st.DataObject) -> None:
    run_example(
        rig,
        data.draw(batches(rig.targets), label="batch"),
        sync=False,
        as_type=data.draw(st.sampled_from(AS_TYPES), label="as_type"),
        prefetch=data.draw(st.booleans(), label="prefetch"),
        delete_after_complete=data.draw(st.booleans(), label="delete_after_complete"),
    )


@fuzz_settings(10, 2_000, quick_shrink=False)
@given(data=st.data())
def test_sync_receive_of_hostile_batches(rig: Rig, data: st.DataObject) -> None:
    run_example(
        rig,
        data.draw(batches(rig.targets, max_hostile=2), label="batch"),
        sync=True,
        as_type=data.draw(st.sampled_from(AS_TYPES), label="as_type"),
        prefetch=True,
        delete_after_complete=data.draw(st.booleans(), label="delete_after_complete"),
    )


GOOD = Spec(
    "good-inline",
    Body("data", {"data_body": b'{"OrderId": "good", "Total": 1}'}),
    {},
    "good-1",
    "application/json",
    expected={"OrderId": "good", "Total": 1},
)


def hostile(body: Body, **properties: object) -> Spec:
    return Spec("hostile", body, dict(properties), "hostile-1")


def claim_check(url: str) -> Spec:
    return hostile(Body("data", {"data_body": b""}), IsClaimCheck=True, ClaimCheckBlobUri=url)


# Issue 16's reported failures and the fuzzing's first finds, as fixed batches: each runs
# through the same invariants as the generated ones.
KNOWN: dict[str, Any] = {
    "AMQP value int": lambda rig: [GOOD, hostile(Body("value-int", {"value_body": 1}))],
    "AMQP value of two large longs (a 256 MiB expansion)": lambda rig: [
        GOOD,
        hostile(Body("value-list", {"value_body": [amqp_long(2**27), amqp_long(2**27)]})),
    ],
    "AMQP sequence spelling {}": lambda rig: [
        GOOD,
        hostile(Body("sequence", {"sequence_body": [[123, 125]]})),
    ],
    "traversal to another container": lambda rig: [
        GOOD,
        claim_check(
            f"{rig.targets.trusted_prefix}/..%2F{rig.decoy_container}%2F{DECOY_ELSEWHERE}?sig=bogus"
        ),
    ],
    "our container outside the entity's layout": lambda rig: [
        GOOD,
        claim_check(f"{rig.targets.trusted_prefix}/{DECOY_IN_OUR_CONTAINER}?sig=bogus"),
    ],
    "a tab the URL check strips and httpx refuses": lambda rig: [
        GOOD,
        claim_check(f"{rig.targets.trusted_prefix}/a\tb.json?sig=bogus"),
    ],
}


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("case", list(KNOWN))
def test_known_hostile_batches(rig: Rig, case: str, sync: bool) -> None:
    run_example(
        rig, KNOWN[case](rig), sync=sync, as_type=dict, prefetch=True, delete_after_complete=True
    )
