"""Layered settings: keyword arguments, environment, ``.env``, per-environment TOML, base TOML.

The shape follows the original .NET design's ``ServiceBus`` appsettings section, in Python
names. Sources, highest first:

1. keyword arguments to :class:`BusSettings`;
2. environment variables ``CLAIMCHECK_<SECTION>__<KEY>`` (e.g.
   ``CLAIMCHECK_CLAIM_CHECK__MAX_PAYLOAD_SIZE_KB``);
3. a ``.env`` file in the configuration folder;
4. ``claimcheck.{env}.toml``, where ``{env}`` is ``CLAIMCHECK_ENV`` (default ``development``);
5. ``claimcheck.toml``.

The configuration folder is ``CLAIMCHECK_CONFIG_DIR`` (default: the working directory).
"""

from __future__ import annotations

import contextvars
import difflib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from claimcheck_bus.connection_strings import (
    service_bus_connection_string_problems,
    storage_connection_string_problems,
)
from claimcheck_bus.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "CLAIMCHECK_"
DEFAULT_ENV = "development"
#: Premium tier's largest message; a threshold above it could never be reached.
MAX_THRESHOLD_KB = 100 * 1024
_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")


# Values that authenticate on their own: connection-string keys and SAS tokens.
_SECRET_VALUE = re.compile(
    r"(?i)\b(SharedAccessKey|AccountKey|SharedAccessSignature|sig)=[^;&\s'\"]*"
)


def redact_secrets(text: str) -> str:
    """``text`` with connection-string keys and SAS signatures replaced by ``REDACTED``."""
    return _SECRET_VALUE.sub(r"\1=REDACTED", text)


class _RedactSecrets(logging.Filter):
    """Renders a record and blanks secret values in it (never drops the record)."""

    redacts_secrets = True

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _install_log_redaction() -> None:
    # With PYDANTIC_SETTINGS_DEBUG=1 and DEBUG logging, pydantic-settings logs every source's
    # raw values, connection strings included, before they become SecretStr.
    logger = logging.getLogger("pydantic_settings")
    if not any(getattr(f, "redacts_secrets", False) for f in logger.filters):
        logger.addFilter(_RedactSecrets())


_install_log_redaction()


def env_var(setting: str) -> str:
    """The environment variable that sets a dotted setting, e.g. ``claim_check.enabled``."""
    return ENV_PREFIX + setting.replace(".", "__").upper()


def _well_formed(
    value: SecretStr | None, setting: str, problems_of: Callable[[str], list[str]]
) -> SecretStr | None:
    # Raised as ConfigurationError (a ValueError): pydantic reports it under the setting, and
    # hide_input_in_errors keeps the connection string out of the report.
    problems = problems_of(value.get_secret_value()) if value is not None else []
    if problems:
        raise ConfigurationError(f"{_named(setting)} is malformed: " + " ".join(problems))
    return value


def _positive(value: float, setting: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{_named(setting)}: {value} must be a number above 0.")
    return value


class _Section(BaseModel):
    # Inputs may hold secrets: never echo them in validation errors.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ServiceBusSettings(_Section):
    """Where the Service Bus namespace is and how to authenticate to it."""

    connection_string: SecretStr | None = None
    """A namespace connection string (SAS key). Secret: never logged or shown."""
    fully_qualified_namespace: str | None = None
    """``<namespace>.servicebus.windows.net``; authenticates with azure-identity."""
    default_queue_name: str | None = None
    """The queue used when a call names no entity."""
    send_timeout_seconds: float = 30.0
    """How long one ``publish`` (or ``publish_batch`` send, or ``cancel_scheduled``) may wait
    for the namespace, the SDK's retries included; then it fails with ``SendTimeoutError``."""

    @field_validator("connection_string")
    @classmethod
    def _connection_string_is_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        return _well_formed(
            value, "service_bus.connection_string", service_bus_connection_string_problems
        )

    @field_validator("send_timeout_seconds")
    @classmethod
    def _send_timeout_is_positive(cls, value: float) -> float:
        return _positive(value, "service_bus.send_timeout_seconds")


class BlobStorageSettings(_Section):
    """The storage account that holds claim-checked payloads."""

    connection_string: SecretStr | None = None
    """A storage connection string (account key). Secret: never logged or shown."""
    account_url: str | None = None
    """``https://<account>.blob.core.windows.net``; authenticates with azure-identity."""
    retry_total: int | None = None
    """Retries of the storage SDK on transient failures (unset: the SDK's 10). A connection
    that cannot be made is retried at most 3 times within about 4 s; HTTP 5xx and 429 answers
    keep the SDK's longer backoff."""

    @field_validator("connection_string")
    @classmethod
    def _connection_string_is_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        return _well_formed(
            value,
            "claim_check.blob_storage.connection_string",
            storage_connection_string_problems,
        )


class ClaimCheckSettings(_Section):
    """When payloads go to Blob Storage, and what a receiver accepts back."""

    enabled: bool = True
    """Offload payloads too large for a message. Off: too large raises ``PayloadTooLargeError``."""
    always: bool = False
    """Offload every payload, whatever its size."""
    max_payload_size_kb: int | None = None
    """Offload above this many KiB (the original's ``MaxEventPayloadSizeLimitInKB``).

    Unset: the entity's own maximum message size decides."""
    container_name: str = "claim-check"
    """The blob container for payloads; created once per process when missing."""
    sas_expiry_hours: float = 24.0
    """Lifetime of the read-only SAS in each message (never shorter than the message's TTL)."""
    blob_storage: BlobStorageSettings = Field(default_factory=BlobStorageSettings)
    trusted_blob_endpoints: list[str] = Field(default_factory=list)
    """Extra storage endpoints (``scheme://host[:port]/account[/container]``) receivers may
    download from, besides the configured account's own container."""
    allow_http: bool = False
    """Accept ``http`` payload URLs beyond loopback hosts (e.g. Azurite in a container network)."""
    max_download_size_mb: float = 256.0
    """Receivers refuse payloads larger than this, before and while downloading."""
    download_timeout_seconds: float = 30.0
    """Wall time of one payload download attempt; a download gives up after four attempts'
    worth, backoffs included."""
    payload_budget_mb: float | None = None
    """Fetched payload bytes a receiver (a bus, a worker) holds at once, until their messages
    are settled; further downloads wait. Default: twice ``max_download_size_mb``."""
    delete_after_complete: bool = False
    """Delete the blob when a claim-checked message is completed. Only for point-to-point
    queues: on a topic the other subscriptions still need it."""
    compression: Literal["none", "gzip"] = "none"
    """Compress offloaded payloads (when it saves at least a tenth). Off by default: readers
    built on the original .NET design cannot decompress them."""


class EventsSettings(_Section):
    """What every published message carries besides the event."""

    cloud_events: bool = False
    """Also write the CloudEvents AMQP binary-mode attributes (``cloudEvents_specversion``,
    ``type``, ``source``, ``id``, ``time``) as application properties. Off by default: they
    cost bytes and encoder time on every message, and readers find the event type in the
    subject. Readers accept them either way."""


class BusSettings(BaseSettings):
    """All claimcheck-bus settings, layered from code, environment and per-environment files.

    Example: ``BusSettings()`` reads ``CLAIMCHECK_*`` variables and the TOML files of the
    environment named by ``CLAIMCHECK_ENV``; ``BusSettings(claim_check={"always": True})``
    overrides one setting in code.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        hide_input_in_errors=True,
        validate_default=True,
    )

    env: str = DEFAULT_ENV
    """The environment whose ``claimcheck.{env}.toml`` was layered in (``CLAIMCHECK_ENV``)."""
    service_bus: ServiceBusSettings = Field(default_factory=ServiceBusSettings)
    claim_check: ClaimCheckSettings = Field(default_factory=ClaimCheckSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, environment, ``.env``, ``claimcheck.{env}.toml``, then base TOML.

        Each source below the first is wrapped to record what it set (``value_sources``) and to
        drop its half of a pair that a higher source chose the other half of (a connection
        string in the environment replaces a file's namespace, and the reverse)."""
        folder = config_dir()
        env = _chosen_env(init_settings)
        record: dict[str, str] = {}
        _RECORD.set(record)
        _note(record, init_settings(), "keyword")
        env_file = folder / f"claimcheck.{env}.toml"
        base_file = folder / "claimcheck.toml"
        return (
            init_settings,
            _Recorded(settings_cls, env_settings, record, "environment"),
            _Recorded(settings_cls, _DotEnvInFolder(settings_cls, folder / ".env"), record, ".env"),
            _Recorded(
                settings_cls,
                _toml_source(settings_cls, env_file),
                record,
                str(env_file),
                toml_file=env_file,
            ),
            _Recorded(
                settings_cls,
                _toml_source(settings_cls, base_file),
                record,
                str(base_file),
                toml_file=base_file,
            ),
        )

    @model_validator(mode="after")
    def _check(self) -> BusSettings:
        self._sources = dict(_RECORD.get())
        problems = settings_problems(self)
        if problems:
            raise ConfigurationError("\n".join(self._with_sources(problems)))
        for warning in configuration_warnings():
            _warn_once(warning)
        return self

    def value_sources(self) -> dict[str, str]:
        """Where each setting that is not a default came from, by dotted name: ``keyword``,
        ``environment CLAIMCHECK_...``, ``.env CLAIMCHECK_...`` or a TOML file's path."""
        return dict(self._sources)

    def _with_sources(self, problems: list[str]) -> list[str]:
        # A problem about two settings is only fixable knowing which source set each.
        return [problem + sources_named_by(problem, self._sources) for problem in problems]


def _toml_source(settings_cls: type[BaseSettings], path: Path) -> TomlConfigSettingsSource:
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path}: not valid TOML ({error})") from None


def config_dir() -> Path:
    """The folder of ``claimcheck*.toml`` and ``.env``: ``CLAIMCHECK_CONFIG_DIR`` or the cwd."""
    return Path(os.environ.get(ENV_PREFIX + "CONFIG_DIR") or Path.cwd())


def _chosen_env(init_settings: PydanticBaseSettingsSource) -> str:
    given = init_settings().get("env")
    return str(given or os.environ.get(ENV_PREFIX + "ENV") or DEFAULT_ENV)


class _DotEnvInFolder(PydanticBaseSettingsSource):
    """``.env`` from the configuration folder; only ``CLAIMCHECK_`` keys, other keys are ignored."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` builds the whole mapping at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self._path.is_file():
            return {}
        variables = _read_dotenv(self._path)
        unknown = unknown_variables(variables, f"{self._path} ")
        if unknown:
            raise ConfigurationError("\n".join(str(warning) for warning in unknown))
        return nest_env_vars(variables)


def _read_dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values  # pydantic-settings depends on python-dotenv

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def nest_env_vars(variables: dict[str, str]) -> dict[str, Any]:
    """``{"CLAIMCHECK_CLAIM_CHECK__ENABLED": "1"}`` -> ``{"claim_check": {"enabled": "1"}}``."""
    nested: dict[str, Any] = {}
    for key, value in variables.items():
        if not key.upper().startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if path[0] == "config_dir":
            continue
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _maybe_json(value)
    return nested


def _maybe_json(value: str) -> Any:
    # Lists and tables arrive as JSON text, as pydantic-settings reads them from the environment.
    if value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _named(setting: str) -> str:
    return f"{setting} ({env_var(setting)})"


def settings_problems(settings: BusSettings) -> list[str]:
    """Every inconsistency in ``settings``, each naming the setting and how to fix it."""
    sb, cc = settings.service_bus, settings.claim_check
    problems: list[str] = []
    if sb.connection_string is None and not sb.fully_qualified_namespace:
        problems.append(
            f"service_bus: no namespace configured. Set {_named('service_bus.connection_string')}"
            f" or {_named('service_bus.fully_qualified_namespace')}."
        )
    if sb.connection_string is not None and sb.fully_qualified_namespace:
        problems.append(
            "service_bus: both connection_string and fully_qualified_namespace are set. "
            "Keep one: the connection string (SAS key) or the namespace (azure-identity)."
        )
    storage = cc.blob_storage
    has_storage = storage.connection_string is not None or bool(storage.account_url)
    if cc.enabled and not has_storage:
        problems.append(
            "claim_check.blob_storage: claim-check is enabled but no storage account is "
            f"configured. Set {_named('claim_check.blob_storage.connection_string')} or "
            f"{_named('claim_check.blob_storage.account_url')}, "
            f"or disable claim-check with {env_var('claim_check.enabled')}=false."
        )
    if storage.connection_string is not None and storage.account_url:
        problems.append(
            "claim_check.blob_storage: both connection_string and account_url are set. "
            "Keep one: the connection string (account key) or the account URL (azure-identity)."
        )
    if storage.account_url:
        problems.extend(_account_url_problems(storage.account_url))
    size = cc.max_payload_size_kb
    if size is not None and not 0 < size <= MAX_THRESHOLD_KB:
        problems.append(
            f"claim_check.max_payload_size_kb: {size} is out of range. Use 1 to {MAX_THRESHOLD_KB} "
            "(100 MB, the largest Service Bus message), or leave it unset so that the entity's "
            f"own limit decides ({env_var('claim_check.max_payload_size_kb')})."
        )
    if cc.sas_expiry_hours <= 0:
        problems.append(
            f"claim_check.sas_expiry_hours: {cc.sas_expiry_hours} must be above 0; it is how long "
            f"consumers may fetch a payload ({env_var('claim_check.sas_expiry_hours')})."
        )
    if not _CONTAINER_NAME.match(cc.container_name):
        problems.append(
            f"claim_check.container_name: {cc.container_name!r} is not a valid container name: "
            "use 3-63 lowercase letters, digits and single hyphens."
        )
    if cc.max_download_size_mb <= 0:
        problems.append("claim_check.max_download_size_mb: must be above 0.")
    if cc.download_timeout_seconds <= 0:
        problems.append("claim_check.download_timeout_seconds: must be above 0.")
    if cc.payload_budget_mb is not None and cc.payload_budget_mb < cc.max_download_size_mb:
        problems.append(
            "claim_check.payload_budget_mb: must be at least max_download_size_mb, or the "
            "largest payloads could never be fetched."
        )
    for index, endpoint in enumerate(cc.trusted_blob_endpoints):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            problems.append(
                f"claim_check.trusted_blob_endpoints[{index}]: not an endpoint URL; use "
                "scheme://host[:port]/account[/container] without a query string."
            )
    return problems


def _account_url_problems(url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.query:
        # A query string here is a SAS token: a secret, so the message must not quote the URL.
        return [
            "claim_check.blob_storage.account_url: must not carry a query string (a SAS token "
            "is a secret: use the connection string, or azure-identity with a bare account URL)."
        ]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [
            f"claim_check.blob_storage.account_url: {url!r} is not a URL; use "
            "https://<account>.blob.core.windows.net."
        ]
    return []


# --- where values came from, and mistakes that would otherwise pass silently ----------------

#: Pairs of which one is chosen: a higher source setting one drops the other from lower ones.
EXCLUSIVE_SETTINGS = (
    ("service_bus", "connection_string", "fully_qualified_namespace"),
    ("claim_check.blob_storage", "connection_string", "account_url"),
)
#: ``CLAIMCHECK_`` variables that belong to other tools of this project, not to settings.
FOREIGN_VARIABLES = ("CLAIMCHECK_TEST_", "CLAIMCHECK_AZURITE_DIR")
_CONTROL_VARIABLES = (ENV_PREFIX + "ENV", ENV_PREFIX + "CONFIG_DIR")

_RECORD: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("claimcheck_sources")
_log = logging.getLogger(__name__)
_warned: set[str] = set()


@dataclass(frozen=True)
class ConfigWarning:
    """A configuration mistake: what, where (variable, or file and line), and the likely fix."""

    problem: str
    where: str
    suggestion: str | None = None

    def __str__(self) -> str:
        hint = f" Did you mean {self.suggestion}?" if self.suggestion else ""
        return f"{self.where}: {self.problem}.{hint}"


def setting_names() -> dict[str, bool]:
    """Every dotted setting name (``claim_check.blob_storage.account_url``); True for sections."""
    names: dict[str, bool] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            dotted = prefix + name
            kind = info.annotation
            is_section = isinstance(kind, type) and issubclass(kind, BaseModel)
            names[dotted] = is_section
            if is_section:
                walk(kind, dotted + ".")  # type: ignore[arg-type]

    walk(BusSettings, "")
    return names


def nearest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``name`` (a typo's intended name), or None when none is close."""
    choices = list(candidates)
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    # An abbreviation (``prod`` for ``production``) is too short for a similarity ratio.
    extending = [choice for choice in choices if name and choice.startswith(name)]
    return extending[0] if len(extending) == 1 else None


def sources_named_by(problem: str, sources: Mapping[str, str]) -> str:
    """`` (set: a from X; b from Y)`` for the settings a problem's text is about, else ``""``."""
    subject, _, text = problem.partition(":")
    named = []
    for name, source in sources.items():
        parent, _, leaf = name.rpartition(".")
        if name == subject or (parent == subject and re.search(rf"\b{leaf}\b", text)):
            named.append(f"{name} from {source}")
    return f" (set: {'; '.join(named)})" if named else ""


def unknown_variables(environ: Mapping[str, str], where: str = "") -> list[ConfigWarning]:
    """``CLAIMCHECK_`` variables that match no setting (pydantic-settings ignores them)."""
    known = {env_var(name) for name in setting_names()} | set(_CONTROL_VARIABLES)
    found = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(FOREIGN_VARIABLES):
            continue
        found.append(
            ConfigWarning(
                "this variable matches no setting and is ignored",
                f"{where}{variable}",
                nearest_name(name, known),
            )
        )
    return found


_TABLE = re.compile(r"^\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
_ASSIGNMENT = re.compile(
    r"^((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)
_KEY_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)")


def _dotted(key: str) -> tuple[str, ...]:
    return tuple(
        next(part for part in match.groups() if part is not None)
        for match in _KEY_PART.finditer(key)
    )


def toml_key_lines(text: str) -> dict[str, int]:
    """The line where each table and key of a TOML text is first written, by dotted name."""
    lines: dict[str, int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = _TABLE.match(stripped)
        if header:
            table = _dotted(header.group(1))
            lines.setdefault(".".join(table), number)
            continue
        assignment = _ASSIGNMENT.match(stripped)
        if assignment:
            lines.setdefault(".".join(table + _dotted(assignment.group(1))), number)
    return lines


def unknown_toml_keys(text: str, file: str) -> list[ConfigWarning]:
    """Keys of a TOML settings file that match no setting, each with its line and nearest name."""
    known = setting_names()
    lines = toml_key_lines(text)
    found: list[ConfigWarning] = []

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for key, value in table.items():
            name = prefix + key
            if name not in known:
                line = lines.get(name)
                where = f"{file}:{line}" if line else file
                suggestion = nearest_name(name, known)
                found.append(ConfigWarning(f"{name!r} matches no setting", where, suggestion))
            elif known[name] and isinstance(value, dict):
                walk(value, name + ".")

    walk(tomllib.loads(text), "")
    return found


def missing_environment_file(env: str, folder: Path, existing: Iterable[str]) -> ConfigWarning:
    """The warning for an environment with no ``claimcheck.{env}.toml``, naming those that exist
    (``existing``: the environments whose files are in the folder)."""
    choices = sorted(existing)
    return ConfigWarning(
        f"environment {env!r} has no file claimcheck.{env}.toml in {folder}, so only the base "
        "file and variables apply"
        + (f" (files exist for: {', '.join(choices)})" if choices else ""),
        ENV_PREFIX + "ENV",
        nearest_name(env, choices),
    )


def configuration_warnings(
    environ: Mapping[str, str] | None = None, *, env: str | None = None
) -> list[ConfigWarning]:
    """Every silent mistake in the configuration ``environ`` (default ``os.environ``) selects:
    a missing folder, an environment without its file, unknown variables (environment and
    ``.env``) and unknown TOML keys. ``env`` is the keyword ``env=``, if one is given."""
    environ = os.environ if environ is None else environ
    warnings: list[ConfigWarning] = []
    folder_setting = environ.get(ENV_PREFIX + "CONFIG_DIR")
    folder = Path(folder_setting) if folder_setting else Path.cwd()
    if folder_setting and not folder.is_dir():
        warnings.append(
            ConfigWarning(
                f"configuration folder {folder} does not exist, so no file is read",
                ENV_PREFIX + "CONFIG_DIR",
            )
        )
    chosen = env or environ.get(ENV_PREFIX + "ENV")
    if chosen and folder.is_dir() and not (folder / f"claimcheck.{chosen}.toml").is_file():
        existing = [
            path.name[len("claimcheck.") : -len(".toml")]
            for path in folder.glob("claimcheck.*.toml")
        ]
        warnings.append(missing_environment_file(chosen, folder, existing))
    warnings.extend(unknown_variables(environ))
    dotenv = folder / ".env"
    if dotenv.is_file():
        warnings.extend(unknown_variables(_read_dotenv(dotenv), f"{dotenv} "))
    for name in ("claimcheck.toml", f"claimcheck.{chosen or DEFAULT_ENV}.toml"):
        path = folder / name
        if path.is_file():
            try:
                warnings.extend(unknown_toml_keys(path.read_text(encoding="utf-8"), str(path)))
            except tomllib.TOMLDecodeError as error:
                warnings.append(ConfigWarning(f"not valid TOML ({error})", str(path)))
    return warnings


def _warn_once(warning: ConfigWarning) -> None:
    text = str(warning)
    if text not in _warned:
        _warned.add(text)
        _log.warning("configuration: %s", text)


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    known = setting_names()
    for key, value in tree.items():
        name = prefix + key
        if known.get(name) and isinstance(value, Mapping):
            yield from _set_leaves(value, name + ".")
        else:
            yield name


def drop_overridden(higher: Mapping[str, Any], lower: dict[str, Any]) -> dict[str, Any]:
    """``lower`` without its half of each :data:`EXCLUSIVE_SETTINGS` pair whose other half a
    higher source set: a variable's connection string replaces a file's namespace."""
    for section, first, second in EXCLUSIVE_SETTINGS:
        above, below = _get(higher, section), _get(lower, section)
        if not isinstance(above, Mapping) or not isinstance(below, dict):
            continue
        for chosen, other in ((first, second), (second, first)):
            if above.get(chosen) not in (None, "") and other in below and chosen not in below:
                below = {k: v for k, v in below.items() if k != other}
        lower = _replaced(lower, section.split("."), below)
    return lower


def _replaced(tree: dict[str, Any], path: list[str], value: dict[str, Any]) -> dict[str, Any]:
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _replaced(dict(tree[path[0]]), path[1:], value)}


def _note(
    record: dict[str, str], data: Mapping[str, Any], label: str | Callable[[str], str]
) -> None:
    for name in _set_leaves(data):
        record.setdefault(name, label if isinstance(label, str) else label(name))


class _Recorded(PydanticBaseSettingsSource):
    """A lower source that records what it set and yields to choices made above it."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        inner: PydanticBaseSettingsSource,
        record: dict[str, str],
        label: str,
        *,
        toml_file: Path | None = None,
    ) -> None:
        super().__init__(settings_cls)
        self._inner = inner
        self._record = record
        self._label = label
        self._toml_file = toml_file
        # pydantic-settings' debug log names each source by this.
        self.__name__ = type(inner).__name__

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Unused: ``__call__`` builds the whole mapping at once."""
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._toml_file is not None and self._toml_file.is_file():
            unknown = unknown_toml_keys(
                self._toml_file.read_text(encoding="utf-8"), str(self._toml_file)
            )
            if unknown:
                raise ConfigurationError("\n".join(str(warning) for warning in unknown))
        if self._label == "environment":
            _refuse_unknown_in_sections(os.environ)
        data = drop_overridden(self.current_state, self._inner())
        _note(self._record, data, self._describe)
        return data

    def _describe(self, name: str) -> str:
        if self._label == "environment":
            return f"environment {_variable_for(name, os.environ)}"
        if self._label == ".env":
            return f".env {env_var(name)}"
        return self._label


def _refuse_unknown_in_sections(environ: Mapping[str, str]) -> None:
    # pydantic-settings passes unknown keys inside a known section on (and pydantic refuses
    # them without naming the variable); unknown top-level names it ignores: those only warn.
    sections = {env_var(name) + "__" for name, section in setting_names().items() if section}
    refused = [w for w in unknown_variables(environ) if w.where.upper().startswith(tuple(sections))]
    if refused:
        raise ConfigurationError("\n".join(str(warning) for warning in refused))


def _variable_for(name: str, environ: Mapping[str, str]) -> str:
    # A section may come whole as JSON in its own variable (CLAIMCHECK_SERVICE_BUS='{...}').
    present = {key.upper() for key in environ}
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        variable = env_var(".".join(parts[:end]))
        if variable in present:
            return variable
    return env_var(name)
