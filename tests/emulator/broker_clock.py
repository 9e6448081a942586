"""The emulator tests' one fake: a clock the broker reads, moved by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """The one thing tests may fake."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)
