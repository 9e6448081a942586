"""The whole receive path fuzzed end to end: generated batches of hostile and good messages
through the emulator (real azure-servicebus SDK) and Azurite, received by both clients.

The invariants are in ``fuzz_harness``; the long run is ``benchmarks/fuzz_receive.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fuzz_harness import AS_TYPES, Rig, batches, run_example, running_rig
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
