"""The emulator's command line: argument checks and the ready line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomllib
from azure.servicebus import ServiceBusClient, ServiceBusMessage

from claimcheck_bus.emulator.__main__ import main
from claimcheck_bus.emulator.server import DEFAULT_PORT


def test_bad_config_file_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "Config.json"
    bad.write_text('{"UserConfig": {"Namespaces": []}}')
    assert main(["--config", str(bad), "--port", "0"]) == 2
    assert "Config.json" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", str(100 * 1024 * 1024 + 1)])
def test_max_message_size_out_of_range_is_refused(size: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--max-message-size", size])
    assert exited.value.code == 2


def test_cli_serves_custom_key_and_limit_then_stops_on_sigint() -> None:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "claimcheck_bus.emulator", "--port", "0",
            "--key-name", "Custom", "--key", "s3cret", "--max-message-size", "2000000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("Endpoint=sb://127.0.0.1:")
        assert line.endswith(
            ";SharedAccessKeyName=Custom;SharedAccessKey=s3cret;UseDevelopmentEmulator=true;"
        )
        with ServiceBusClient.from_connection_string(line) as client:
            with client.get_queue_sender("orders", keep_alive=0) as sender:
                sender.send_messages(ServiceBusMessage(b"m" * 1_000_000))  # over 256 KB
                assert sender.create_message_batch().max_size_in_bytes == 1024 * 1024
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_PORT})" in shown
    assert "(default: 127.0.0.1)" in shown
    assert "(default: 262144)" in shown
    assert "(default: None)" not in shown


def test_default_port_is_the_one_the_samples_development_config_names() -> None:
    config = Path(__file__).parents[2] / "samples" / "claimcheck.development.toml"
    connection_string = tomllib.loads(config.read_text())["service_bus"]["connection_string"]
    endpoint = dict(part.split("=", 1) for part in connection_string.split(";") if part)
    assert urlsplit(endpoint["Endpoint"]).port == DEFAULT_PORT
    # Microsoft's emulator's 5672 is AMQP's well-known port, held by RabbitMQ on these machines.
    assert DEFAULT_PORT != 5672
