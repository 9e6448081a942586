"""Configuration mistakes that used to pass silently: warnings, located errors, value sources."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from claimcheck_bus import BusSettings, ConfigurationError
from claimcheck_bus.settings import (
    ConfigWarning,
    configuration_warnings,
    drop_overridden,
    nearest_name,
    setting_names,
    sources_named_by,
    toml_key_lines,
    unknown_toml_keys,
    unknown_variables,
)

SB_CONN = "Endpoint=sb://local/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0LWtleQ=="
STORAGE = {"blob_storage": {"account_url": "https://contoso.blob.core.windows.net"}}


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("CLAIMCHECK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLAIMCHECK_CONFIG_DIR", str(tmp_path))
    return tmp_path


def test_setting_names_cover_sections_and_leaves() -> None:
    names = setting_names()
    assert names["claim_check"] is True
    assert names["claim_check.blob_storage"] is True
    assert names["claim_check.blob_storage.account_url"] is False
    assert names["env"] is False


def test_nearest_name_finds_the_intended_setting() -> None:
    assert nearest_name("claim_check.enabeld", setting_names()) == "claim_check.enabled"
    assert nearest_name("zzzz", setting_names()) is None


def test_unknown_variables_name_the_intended_one_and_skip_known_and_foreign() -> None:
    found = unknown_variables(
        {
            "CLAIMCHECK_CLAIMCHECK__ENABLED": "true",
            "CLAIMCHECK_CLAIM_CHECK__ENABLED": "true",
            "CLAIMCHECK_SERVICE_BUS": "{}",
            "CLAIMCHECK_ENV": "x",
            "CLAIMCHECK_TEST_POSTGRES_DSN": "x",
            "PATH": "/bin",
        }
    )
    assert found == [
        ConfigWarning(
            "this variable matches no setting and is ignored",
            "CLAIMCHECK_CLAIMCHECK__ENABLED",
            "CLAIMCHECK_CLAIM_CHECK__ENABLED",
        )
    ]


def test_toml_key_lines_follow_tables_dotted_and_quoted_keys() -> None:
    text = '# c\n[claim_check]\nenabled = true\n"container_name" = "x"\n[claim_check.blob_storage]\naccount_url = "u"\nservice_bus.default_queue_name = "q"\n'
    lines = toml_key_lines(text)
    assert lines["claim_check"] == 2
    assert lines["claim_check.enabled"] == 3
    assert lines["claim_check.container_name"] == 4
    assert lines["claim_check.blob_storage.account_url"] == 6
    assert lines["claim_check.blob_storage.service_bus.default_queue_name"] == 7


def test_unknown_toml_keys_have_file_line_and_nearest_key() -> None:
    text = '[service_bus]\ndefault_queue_name = "q"\n\n[claim_check]\nenabeld = true\n[claimcheck]\nx = 1\n'
    found = unknown_toml_keys(text, "/cfg/claimcheck.toml")
    assert [str(w) for w in found] == [
        "/cfg/claimcheck.toml:5: 'claim_check.enabeld' matches no setting. "
        "Did you mean claim_check.enabled?",
        "/cfg/claimcheck.toml:6: 'claimcheck' matches no setting. Did you mean claim_check?",
    ]


def test_a_toml_typo_fails_loading_with_file_line_and_intended_key(config_dir: Path) -> None:
    (config_dir / "claimcheck.toml").write_text("[claim_check]\nenabled = false\ncontainer = 'x'\n")
    with pytest.raises(ConfigurationError) as caught:
        BusSettings(service_bus={"connection_string": SB_CONN})
    text = str(caught.value)
    assert f"{config_dir / 'claimcheck.toml'}:3" in text
    assert "claim_check.container_name" in text


def test_a_dotenv_typo_fails_loading_naming_the_intended_variable(config_dir: Path) -> None:
    (config_dir / ".env").write_text("CLAIMCHECK_CLAIMCHECK__ENABLED=false\n")
    with pytest.raises(ConfigurationError, match="CLAIMCHECK_CLAIM_CHECK__ENABLED"):
        BusSettings(service_bus={"connection_string": SB_CONN})


def test_warnings_for_missing_folder_env_without_file_and_unknown_variable(
    tmp_path: Path,
) -> None:
    (tmp_path / "claimcheck.production.toml").write_text("")
    warnings = configuration_warnings(
        {
            "CLAIMCHECK_CONFIG_DIR": str(tmp_path),
            "CLAIMCHECK_ENV": "prod",
            "CLAIMCHECK_CLAIMCHECK__ENABLED": "1",
        }
    )
    texts = [str(w) for w in warnings]
    assert any(
        t.startswith("CLAIMCHECK_ENV: environment 'prod' has no file claimcheck.prod.toml")
        and "files exist for: production" in t
        and "Did you mean production?" in t
        for t in texts
    ), texts
    assert any(t.startswith("CLAIMCHECK_CLAIMCHECK__ENABLED:") for t in texts)
    missing = configuration_warnings({"CLAIMCHECK_CONFIG_DIR": str(tmp_path / "nope")})
    assert [w.where for w in missing] == ["CLAIMCHECK_CONFIG_DIR"]
    assert "does not exist" in missing[0].problem


def test_the_library_logs_each_warning_once(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLAIMCHECK_CLAIMCHECK__ONCE", "false")
    with caplog.at_level(logging.WARNING, logger="claimcheck_bus.settings"):
        BusSettings(service_bus={"connection_string": SB_CONN}, claim_check=STORAGE)
        BusSettings(service_bus={"connection_string": SB_CONN}, claim_check=STORAGE)
    assert caplog.text.count("CLAIMCHECK_CLAIMCHECK__ONCE") == 1


def test_a_typo_inside_a_section_variable_fails_naming_the_intended_one(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__ENABLD", "false")
    with pytest.raises(ConfigurationError, match="Did you mean CLAIMCHECK_CLAIM_CHECK__ENABLED"):
        BusSettings(service_bus={"connection_string": SB_CONN}, claim_check=STORAGE)


def test_a_variable_connection_string_replaces_a_files_namespace(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (config_dir / "claimcheck.production.toml").write_text(
        '[service_bus]\nfully_qualified_namespace = "prod.servicebus.windows.net"\n'
    )
    monkeypatch.setenv("CLAIMCHECK_ENV", "production")
    monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING", SB_CONN)
    settings = BusSettings(claim_check=STORAGE)
    assert settings.service_bus.fully_qualified_namespace is None
    assert settings.service_bus.connection_string is not None
    sources = settings.value_sources()
    assert sources["service_bus.connection_string"] == (
        "environment CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING"
    )
    assert sources["claim_check.blob_storage.account_url"] == "keyword"
    assert "service_bus.fully_qualified_namespace" not in sources


def test_conflicts_within_one_source_name_the_source(config_dir: Path) -> None:
    (config_dir / "claimcheck.toml").write_text(
        f'[service_bus]\nfully_qualified_namespace = "a.servicebus.windows.net"\nconnection_string = "{SB_CONN}"\n'
    )
    with pytest.raises(ValueError, match="both connection_string") as caught:
        BusSettings(claim_check=STORAGE)
    text = str(caught.value)
    assert f"service_bus.fully_qualified_namespace from {config_dir / 'claimcheck.toml'}" in text
    assert "c2VjcmV0LWtleQ" not in text


def test_drop_overridden_is_pure_and_keeps_same_level_conflicts() -> None:
    higher = {"service_bus": {"connection_string": "x"}}
    lower = {"service_bus": {"fully_qualified_namespace": "ns", "default_queue_name": "q"}}
    assert drop_overridden(higher, lower) == {"service_bus": {"default_queue_name": "q"}}
    both = {"service_bus": {"connection_string": "y", "fully_qualified_namespace": "ns"}}
    assert drop_overridden(higher, both) == both
    assert lower == {"service_bus": {"fully_qualified_namespace": "ns", "default_queue_name": "q"}}


def test_sources_named_by_matches_whole_words_of_the_section() -> None:
    sources = {"service_bus.connection_string": "env A", "claim_check.container_name": "file"}
    problem = "service_bus: both connection_string and fully_qualified_namespace are set."
    assert sources_named_by(problem, sources) == " (set: service_bus.connection_string from env A)"
    assert sources_named_by("claim_check.container_name: bad", sources) == (
        " (set: claim_check.container_name from file)"
    )


def test_invalid_toml_is_named_by_its_file(config_dir: Path) -> None:
    path = config_dir / "claimcheck.toml"
    path.write_text("[claim_check]\nenabled = true\n[claim_check]\n")
    [warning] = configuration_warnings({"CLAIMCHECK_CONFIG_DIR": str(config_dir)})
    assert warning.where == str(path)
    assert warning.problem.startswith("not valid TOML (Cannot declare")
    with pytest.raises(ConfigurationError, match=f"{path}: not valid TOML"):
        BusSettings(service_bus={"connection_string": SB_CONN}, claim_check=STORAGE)
