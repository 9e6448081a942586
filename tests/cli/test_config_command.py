"""`claimcheck-bus config show`: effective settings, sources, and each mistake's warning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from claimcheck_bus.testing.azurite import ACCOUNT_KEY


@pytest.fixture
def clean_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azurite: Any, servicebus: Any
) -> Path:
    for name in list(os.environ):
        if name.startswith("CLAIMCHECK_") and not name.startswith("CLAIMCHECK_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLAIMCHECK_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING", servicebus.connection_string)
    monkeypatch.setenv(
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING", azurite.connection_string
    )
    return tmp_path


def test_show_masks_secrets_and_names_each_source(cli: Any, clean_env: Path) -> None:
    (clean_env / "claimcheck.toml").write_text('[claim_check]\ncontainer_name = "from-file"\n')
    ran = cli("config", "show", "--sources", "--json")
    assert ran.code == 0, ran.err
    data = ran.json()
    settings = data["settings"]
    assert settings["claim_check.container_name"] == {
        "value": "from-file",
        "source": str(clean_env / "claimcheck.toml"),
    }
    conn = settings["claim_check.blob_storage.connection_string"]
    assert conn["source"] == "environment CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING"
    assert "AccountName=devstoreaccount1" in conn["value"]
    assert "AccountKey=***" in conn["value"]
    assert settings["claim_check.sas_expiry_hours"] == {"value": 24.0, "source": "default"}
    assert data["warnings"] == []

    table = cli("config", "show", "--sources")
    assert table.code == 0
    assert "claim_check.container_name" in table.out
    assert "from-file" in table.out
    assert ACCOUNT_KEY not in table.out


def test_an_environment_without_its_file_warns_with_the_nearest(cli: Any, clean_env: Path) -> None:
    (clean_env / "claimcheck.production.toml").write_text("")
    ran = cli("config", "show", "--env", "prod")
    assert ran.code == 1
    assert "environment 'prod' has no file claimcheck.prod.toml" in ran.err
    assert "Did you mean production?" in ran.err


def test_a_missing_config_folder_warns(cli: Any, clean_env: Path) -> None:
    ran = cli("config", "show", "--config-dir", str(clean_env / "nope"), "--json")
    assert ran.code == 1
    [warning] = ran.json()["warnings"]
    assert warning["where"] == "CLAIMCHECK_CONFIG_DIR"
    assert "does not exist" in warning["problem"]


def test_a_misspelt_variable_warns_with_the_intended_one(
    cli: Any, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAIMCHECK_CLAIMCHECK__ENABLED", "false")
    ran = cli("config", "show", "--json")
    assert ran.code == 1
    assert ran.json()["warnings"] == [
        {
            "where": "CLAIMCHECK_CLAIMCHECK__ENABLED",
            "problem": "this variable matches no setting and is ignored",
            "suggestion": "CLAIMCHECK_CLAIM_CHECK__ENABLED",
        }
    ]


def test_a_toml_typo_names_file_line_and_key_and_exits_2(cli: Any, clean_env: Path) -> None:
    (clean_env / "claimcheck.toml").write_text("[claim_check]\n\nenabeld = false\n")
    ran = cli("config", "show", "--json")
    assert ran.code == 2
    data = ran.json()
    assert data["valid"] is False
    assert data["warnings"] == [
        {
            "where": f"{clean_env / 'claimcheck.toml'}:3",
            "problem": "'claim_check.enabeld' matches no setting",
            "suggestion": "claim_check.enabled",
        }
    ]
    plain = cli("config", "show")
    assert plain.code == 2
    assert f"{clean_env / 'claimcheck.toml'}:3" in plain.err


def test_a_variable_overrides_a_files_namespace_and_says_so(cli: Any, clean_env: Path) -> None:
    (clean_env / "claimcheck.production.toml").write_text(
        '[service_bus]\nfully_qualified_namespace = "prod.servicebus.windows.net"\n'
    )
    ran = cli("config", "show", "--env", "production", "--sources", "--json")
    assert ran.code == 0, ran.err
    settings = ran.json()["settings"]
    assert settings["service_bus.fully_qualified_namespace"]["value"] is None
    assert settings["service_bus.connection_string"]["source"] == (
        "environment CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING"
    )
    assert "SharedAccessKey=***" in settings["service_bus.connection_string"]["value"]


def test_emulator_arguments_pass_straight_through(cli: Any, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("emulator", "--help")
    assert exited.value.code == 0
    assert "usage: claimcheck-bus emulator" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(cli: Any) -> None:
    assert cli("nonsense").code == 2


def test_running_a_command_leaves_logging_as_it_was(cli: Any, clean_env: Path) -> None:
    import logging

    before = [logging.getLogger(n).level for n in ("azure", "claimcheck_bus")]
    handlers = list(logging.getLogger().handlers)
    cli("config", "show")
    assert [logging.getLogger(n).level for n in ("azure", "claimcheck_bus")] == before
    assert logging.getLogger().handlers == handlers
