"""Running the command line in-process against the emulator and Azurite of the session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from claimcheck_bus.cli import main
from claimcheck_bus.testing.azurite import ACCOUNT_KEY


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], servicebus: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """``cli("dlq", "list", ...)`` runs the command and returns its exit code and output,
    having checked that no account key, namespace key or SAS signature was printed."""
    # Output goes to a capture, not a terminal: tables get the CLI's wide redirected layout
    # unless COLUMNS is set, and pytest-xdist workers inherit COLUMNS=80, which folds cells.
    monkeypatch.delenv("COLUMNS", raising=False)
    sb_key = str(servicebus.connection_string).split("SharedAccessKey=")[1].split(";")[0]

    def run(*args: str, secrets: tuple[str, ...] = ()) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        text = captured.out + captured.err
        for secret in (ACCOUNT_KEY, sb_key, "sig=", *secrets):
            assert secret not in text, f"secret {secret[:6]}... printed by {args}"
        return Ran(code, captured.out, captured.err)

    return run
