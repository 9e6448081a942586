"""BusSettings: source precedence, per-environment files, nested variables, errors, redaction."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from claimcheck_bus import BusSettings
from claimcheck_bus.settings import env_var, nest_env_vars

ACCOUNT_KEY = "c3VwZXItc2VjcmV0LWFjY291bnQta2V5LXRoYXQtbXVzdC1uZXZlci1sZWFr"
SB_KEY = "U0ItS0VZLXRoYXQtbXVzdC1uZXZlci1hcHBlYXItYW55d2hlcmU="
SB_CONN = (
    "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=send;"
    f"SharedAccessKey={SB_KEY}"
)
BLOB_CONN = (
    "DefaultEndpointsProtocol=https;AccountName=contoso;"
    f"AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
)
STORAGE = {"blob_storage": {"account_url": "https://contoso.blob.core.windows.net"}}
NAMESPACE = {"fully_qualified_namespace": "contoso.servicebus.windows.net"}


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty configuration folder and an environment without CLAIMCHECK_ variables."""
    for name in list(os.environ):
        if name.startswith("CLAIMCHECK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLAIMCHECK_CONFIG_DIR", str(tmp_path))
    return tmp_path


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_each_source_beats_the_next_one_down(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        config_dir / "claimcheck.toml",
        '[service_bus]\nfully_qualified_namespace = "base.servicebus.windows.net"\n'
        'default_queue_name = "from-base"\n'
        '[claim_check]\ncontainer_name = "from-base"\nsas_expiry_hours = 1\n'
        "max_payload_size_kb = 1\n"
        '[claim_check.blob_storage]\naccount_url = "https://base.blob.core.windows.net"\n',
    )
    write(
        config_dir / "claimcheck.development.toml",
        '[service_bus]\ndefault_queue_name = "from-env-file"\n'
        '[claim_check]\ncontainer_name = "from-env-file"\nsas_expiry_hours = 2\n',
    )
    write(
        config_dir / ".env",
        "UNRELATED=ignored\nCLAIMCHECK_CLAIM_CHECK__CONTAINER_NAME=from-dotenv\n"
        "CLAIMCHECK_CLAIM_CHECK__SAS_EXPIRY_HOURS=3\n",
    )
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__SAS_EXPIRY_HOURS", "4")

    settings = BusSettings(claim_check={"max_payload_size_kb": 5})

    assert settings.service_bus.fully_qualified_namespace == "base.servicebus.windows.net"
    assert settings.service_bus.default_queue_name == "from-env-file"
    assert settings.claim_check.container_name == "from-dotenv"
    assert settings.claim_check.sas_expiry_hours == 4
    assert settings.claim_check.max_payload_size_kb == 5
    # Nested sections merge: a keyword for one key keeps the others from lower sources.
    assert settings.claim_check.blob_storage.account_url == "https://base.blob.core.windows.net"


def test_claimcheck_env_picks_the_environment_file(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        config_dir / "claimcheck.toml",
        '[service_bus]\nfully_qualified_namespace = "ns.servicebus.windows.net"\n'
        "[claim_check]\nenabled = false\n",
    )
    write(
        config_dir / "claimcheck.production.toml",
        "[claim_check]\nenabled = true\nmax_payload_size_kb = 192\n"
        '[claim_check.blob_storage]\naccount_url = "https://prod.blob.core.windows.net"\n',
    )
    assert BusSettings().claim_check.enabled is False
    assert BusSettings().env == "development"

    monkeypatch.setenv("CLAIMCHECK_ENV", "production")
    production = BusSettings()

    assert production.env == "production"
    assert production.claim_check.enabled is True
    assert production.claim_check.max_payload_size_kb == 192
    assert BusSettings(env="development").claim_check.enabled is False


def test_nested_environment_variables(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING", SB_CONN)
    monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__DEFAULT_QUEUE_NAME", "orders")
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__ENABLED", "true")
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__ALWAYS", "1")
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__MAX_PAYLOAD_SIZE_KB", "200")
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING", BLOB_CONN)
    monkeypatch.setenv(
        "CLAIMCHECK_CLAIM_CHECK__TRUSTED_BLOB_ENDPOINTS",
        '["https://other.blob.core.windows.net/x"]',
    )

    settings = BusSettings()

    assert settings.service_bus.connection_string is not None
    assert settings.service_bus.connection_string.get_secret_value() == SB_CONN
    assert settings.service_bus.default_queue_name == "orders"
    assert settings.claim_check.always is True
    assert settings.claim_check.max_payload_size_kb == 200
    blob = settings.claim_check.blob_storage.connection_string
    assert blob is not None
    assert blob.get_secret_value() == BLOB_CONN
    assert settings.claim_check.trusted_blob_endpoints == ["https://other.blob.core.windows.net/x"]


def test_defaults(config_dir: Path) -> None:
    settings = BusSettings(service_bus=NAMESPACE, claim_check=STORAGE)
    cc = settings.claim_check
    assert (cc.enabled, cc.always, cc.max_payload_size_kb) == (True, False, None)
    assert cc.container_name == "claim-check"
    assert cc.delete_after_complete is False


def error_text(config_dir: Path, **kwargs: object) -> str:
    with pytest.raises(ValidationError) as caught:
        BusSettings(**kwargs)
    return str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"claim_check": STORAGE},
            "service_bus: no namespace configured. Set service_bus.connection_string "
            "(CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING) or "
            "service_bus.fully_qualified_namespace (CLAIMCHECK_SERVICE_BUS__FULLY_QUALIFIED_NAMESPACE).",
        ),
        (
            {"service_bus": NAMESPACE},
            "claim_check.blob_storage: claim-check is enabled but no storage account is configured. "
            "Set claim_check.blob_storage.connection_string "
            "(CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING) or "
            "claim_check.blob_storage.account_url (CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__ACCOUNT_URL), "
            "or disable claim-check with CLAIMCHECK_CLAIM_CHECK__ENABLED=false.",
        ),
        (
            {"service_bus": {**NAMESPACE, "connection_string": SB_CONN}, "claim_check": STORAGE},
            "service_bus: both connection_string and fully_qualified_namespace are set. Keep one: "
            "the connection string (SAS key) or the namespace (azure-identity).",
        ),
        (
            {
                "service_bus": NAMESPACE,
                "claim_check": {
                    "blob_storage": {
                        "account_url": "https://contoso.blob.core.windows.net",
                        "connection_string": BLOB_CONN,
                    }
                },
            },
            "claim_check.blob_storage: both connection_string and account_url are set. Keep one: "
            "the connection string (account key) or the account URL (azure-identity).",
        ),
        (
            {"service_bus": NAMESPACE, "claim_check": {**STORAGE, "max_payload_size_kb": 0}},
            "claim_check.max_payload_size_kb: 0 is out of range. Use 1 to 102400 (100 MB, the "
            "largest Service Bus message), or leave it unset so that the entity's own limit "
            "decides (CLAIMCHECK_CLAIM_CHECK__MAX_PAYLOAD_SIZE_KB).",
        ),
        (
            {"service_bus": NAMESPACE, "claim_check": {**STORAGE, "max_payload_size_kb": 102401}},
            "claim_check.max_payload_size_kb: 102401 is out of range.",
        ),
        (
            {"service_bus": NAMESPACE, "claim_check": {**STORAGE, "sas_expiry_hours": 0}},
            "claim_check.sas_expiry_hours: 0.0 must be above 0; it is how long consumers may "
            "fetch a payload (CLAIMCHECK_CLAIM_CHECK__SAS_EXPIRY_HOURS).",
        ),
        (
            {"service_bus": NAMESPACE, "claim_check": {**STORAGE, "container_name": "Bad_Name"}},
            "claim_check.container_name: 'Bad_Name' is not a valid container name: use 3-63 "
            "lowercase letters, digits and single hyphens.",
        ),
        (
            {"service_bus": NAMESPACE, "claim_check": {**STORAGE, "trusted_blob_endpoints": ["x"]}},
            "claim_check.trusted_blob_endpoints[0]: not an endpoint URL",
        ),
    ],
)
def test_validation_errors_name_the_setting_and_the_fix(
    config_dir: Path, kwargs: dict[str, object], expected: str
) -> None:
    assert expected in error_text(config_dir, **kwargs)


def test_disabled_claim_check_needs_no_storage(config_dir: Path) -> None:
    settings = BusSettings(service_bus=NAMESPACE, claim_check={"enabled": False})
    assert settings.claim_check.enabled is False


def test_all_problems_are_reported_at_once(config_dir: Path) -> None:
    text = error_text(config_dir, claim_check={"sas_expiry_hours": -1})
    assert "service_bus: no namespace configured" in text
    assert "claim_check.blob_storage: claim-check is enabled" in text
    assert "claim_check.sas_expiry_hours: -1.0 must be above 0" in text


def test_a_typo_in_a_setting_name_is_refused(config_dir: Path) -> None:
    text = error_text(config_dir, service_bus=NAMESPACE, claim_check={**STORAGE, "enabeld": True})
    assert "claim_check.enabeld" in text
    assert "Extra inputs are not permitted" in text


def test_secrets_never_show(config_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = BusSettings(
        service_bus={"connection_string": SB_CONN},
        claim_check={"blob_storage": {"connection_string": BLOB_CONN}},
    )
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("settings: %s / %r", settings, settings)
    shown = "\n".join(
        [
            repr(settings),
            str(settings),
            str(settings.model_dump()),
            settings.model_dump_json(),
            repr(settings.claim_check),
            caplog.text,
        ]
    )
    assert SB_KEY not in shown
    assert ACCOUNT_KEY not in shown
    assert "**********" in shown


def test_secrets_never_show_in_validation_errors(config_dir: Path) -> None:
    texts = [
        # Both forms of a credential: the error must not echo the connection strings.
        error_text(
            config_dir,
            service_bus={"connection_string": SB_CONN, **NAMESPACE},
            claim_check={
                "blob_storage": {"connection_string": BLOB_CONN, "account_url": "https://a.b"}
            },
        ),
        # A wrongly typed section still holding a secret.
        error_text(config_dir, service_bus={"connection_string": SB_CONN, "bogus": SB_KEY}),
        # A SAS token smuggled into the account URL.
        error_text(
            config_dir,
            service_bus=NAMESPACE,
            claim_check={"blob_storage": {"account_url": f"https://a.blob.x/?sig={ACCOUNT_KEY}"}},
        ),
    ]
    for text in texts:
        assert SB_KEY not in text
        assert ACCOUNT_KEY not in text
    assert "must not carry a query string" in texts[2]


def test_secrets_from_the_environment_never_show_in_errors(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING", BLOB_CONN)
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__MAX_PAYLOAD_SIZE_KB", "not-a-number")
    text = error_text(config_dir)
    assert "claim_check.max_payload_size_kb" in text
    assert ACCOUNT_KEY not in text


_segment = st.from_regex(r"[a-z][a-z_]{0,8}[a-z]", fullmatch=True).filter(
    lambda s: "__" not in s and s != "config_dir"
)
_value = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="[{"), max_size=5)
_tree = st.recursive(_value, lambda kids: st.dictionaries(_segment, kids, min_size=1, max_size=3))


def _flatten(tree: dict[str, object], prefix: str = "CLAIMCHECK_") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key.upper()}__"))
        else:
            flat[prefix + key.upper()] = str(value)
    return flat


@given(st.dictionaries(_segment, _tree, max_size=4))
def test_nest_env_vars_round_trips_flattened_trees(tree: dict[str, object]) -> None:
    variables = {**_flatten(tree), "OTHER_VAR": "x", "CLAIMCHECK_CONFIG_DIR": "/x"}
    assert nest_env_vars(variables) == tree


def test_nest_env_vars_decodes_json_lists() -> None:
    assert nest_env_vars({"CLAIMCHECK_A__B": '["x"]', "CLAIMCHECK_C": "[oops"}) == {
        "a": {"b": ["x"]},
        "c": "[oops",
    }


def test_env_var_names() -> None:
    assert env_var("claim_check.blob_storage.account_url") == (
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__ACCOUNT_URL"
    )


def test_settings_debug_logging_shows_no_secret(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # pydantic-settings logs the raw value of every source when asked to debug.
    monkeypatch.setenv("PYDANTIC_SETTINGS_DEBUG", "1")
    monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING", SB_CONN)
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING", BLOB_CONN)
    with caplog.at_level(logging.DEBUG):
        BusSettings()
    assert "claim_check" in caplog.text  # the debug output is there...
    assert SB_KEY not in caplog.text  # ...without the keys
    assert ACCOUNT_KEY not in caplog.text


def test_redact_secrets() -> None:
    from claimcheck_bus.settings import redact_secrets

    assert redact_secrets(f"{SB_CONN};x") == (
        "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=send;"
        "SharedAccessKey=REDACTED;x"
    )
    assert (
        redact_secrets("https://a/c/b?sv=1&sig=abc%2B&se=2")
        == "https://a/c/b?sv=1&sig=REDACTED&se=2"
    )
    assert ACCOUNT_KEY not in redact_secrets(BLOB_CONN)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        (
            {
                "service_bus": {"connection_string": SB_CONN.replace("sb://", "")},
                "claim_check": STORAGE,
            },
            "service_bus.connection_string (CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING) is "
            "malformed: its Endpoint is not a URL",
        ),
        (
            {
                "service_bus": NAMESPACE,
                "claim_check": {
                    "blob_storage": {"connection_string": BLOB_CONN.replace("AccountName", "Acct")}
                },
            },
            "claim_check.blob_storage.connection_string "
            "(CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING) is malformed: it has no "
            "AccountName and AccountKey",
        ),
    ],
)
def test_a_malformed_connection_string_fails_when_settings_load(
    config_dir: Path, kwargs: dict[str, object], setting: str
) -> None:
    text = error_text(config_dir, **kwargs)
    assert setting in text
    assert SB_KEY not in text
    assert ACCOUNT_KEY not in text


def test_a_malformed_connection_string_from_the_environment_is_not_echoed(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pasted_key_only = f"SharedAccessKey={SB_KEY}"
    monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING", pasted_key_only)
    text = error_text(config_dir, claim_check={"enabled": False})
    assert "service_bus.connection_string" in text
    assert "it has no Endpoint" in text
    assert SB_KEY not in text


def test_the_send_timeout_is_a_setting(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert BusSettings(service_bus=NAMESPACE, claim_check=STORAGE).service_bus.send_timeout_seconds
    monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__SEND_TIMEOUT_SECONDS", "2.5")
    settings = BusSettings(service_bus=NAMESPACE, claim_check=STORAGE)
    assert settings.service_bus.send_timeout_seconds == 2.5
    for bad in ("0", "-1", "nan", "inf"):
        monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__SEND_TIMEOUT_SECONDS", bad)
        assert "CLAIMCHECK_SERVICE_BUS__SEND_TIMEOUT_SECONDS" in error_text(
            config_dir, service_bus=NAMESPACE, claim_check=STORAGE
        )
