"""Connection strings are checked when settings load, and problems never quote them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claimcheck_bus.connection_strings import (
    service_bus_connection_string_problems,
    storage_connection_string_problems,
)

KEY = "U0ItS0VZLXRoYXQtbXVzdC1uZXZlci1hcHBlYXI="
SB = f"Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={KEY}"
STORAGE = (
    f"DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey={KEY};"
    "EndpointSuffix=core.windows.net"
)
AZURITE = (
    f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


@pytest.mark.parametrize(
    "text",
    [
        SB,
        SB + ";",
        "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=Root;SharedAccessKey=k;"
        "UseDevelopmentEmulator=true;",
        "endpoint=sb://ns.servicebus.windows.net;sharedaccesskeyname=a;sharedaccesskey=b==",
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature "
        "sr=x&sig=y%3D&se=1&skn=send",
        SB + ";EntityPath=orders",
    ],
)
def test_service_bus_connection_strings_the_sdk_accepts_pass(text: str) -> None:
    assert service_bus_connection_string_problems(text) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty."),
        ("pasted-just-the-key", "part 1 of 1 is not a Key=Value pair."),
        (SB.replace(";", ";;", 1), "part 2 of 4 is not a Key=Value pair."),
        (SB.replace("sb://", ""), "its Endpoint is not a URL with a host"),
        (SB.replace("Endpoint", "Endpont"), "it has no Endpoint."),
        (SB.replace("windows.net/", "windows.net:port/"), "its Endpoint is not a URL"),
        (SB.replace("SharedAccessKeyName=send;", ""), "both SharedAccessKeyName and"),
        (SB + ";SharedAccessSignature=sr=x", "keep one"),
        ("Endpoint=sb://ns.servicebus.windows.net/", "it has no SharedAccessKey"),
    ],
)
def test_malformed_service_bus_connection_strings_say_what_is_wrong(
    text: str, problem: str
) -> None:
    problems = service_bus_connection_string_problems(text)
    assert any(problem in p for p in problems), problems
    assert "Expected Endpoint=sb://<namespace>" in problems[-1]


@pytest.mark.parametrize("text", [STORAGE, AZURITE, STORAGE.lower().replace(KEY.lower(), KEY)])
def test_storage_connection_strings_with_an_account_key_pass(text: str) -> None:
    assert storage_connection_string_problems(text) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (" ; ", "it is empty."),
        ("AccountName=a;just-the-key", "part 2 of 2 is not a Key=Value pair."),
        ("UseDevelopmentStorage=true", "UseDevelopmentStorage=true carries no account key"),
        (STORAGE.replace(f"AccountKey={KEY};", ""), "no AccountName and AccountKey"),
        (
            "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=1&sig=S",
            "no AccountName and AccountKey",
        ),
        (STORAGE.replace(KEY, KEY[:-2] + "!"), "its AccountKey is not base64"),
        (STORAGE.replace("=https", "=ftp"), "its DefaultEndpointsProtocol must be https"),
        (AZURITE.replace("http://", ""), "its BlobEndpoint is not an http(s) URL"),
    ],
)
def test_malformed_storage_connection_strings_say_what_is_wrong(text: str, problem: str) -> None:
    problems = storage_connection_string_problems(text)
    assert any(problem in p for p in problems), problems


@given(st.text(max_size=200))
def test_no_problem_ever_quotes_the_connection_string(text: str) -> None:
    secret = "Zm9vYmFyLXNlY3JldC12YWx1ZQ=="
    for candidate in (text + secret, secret + ";" + text, f"SharedAccessKey={secret};{text}"):
        for problems_of in (
            service_bus_connection_string_problems,
            storage_connection_string_problems,
        ):
            assert secret not in " ".join(problems_of(candidate))
