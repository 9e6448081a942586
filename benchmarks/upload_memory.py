"""Peak RSS above baseline while uploading one large payload to Azurite, per upload path.

Run: ``.venv/bin/python benchmarks/upload_memory.py [--mb 100] [--variants store,store-async]``.
Each variant runs in a fresh interpreter (``--child``) so that one variant's freed memory cannot
hide another's peak: the child allocates the payload (which the caller holds anyway), opens the
client, uploads a warm-up blob, records ``ru_maxrss``, uploads, and reports how far the peak
grew. Starts its own Azurite (npm) on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = [
    "sdk-bytes",
    "sdk-bytesio",
    "sdk-chunks",
    "store",
    "store-view",
    "store-async",
    "store-async-single-put",
]
OCTETS = "application/octet-stream"
Measure = tuple[float, float]  # (peak before the upload, seconds)


def rss_peak_mb() -> float:
    """This process's peak resident set so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_buffer(size: int) -> bytearray:
    """Random bytes filled in place: building them from bytes would double the peak early."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    for offset in range(0, size, 2**20):
        view[offset : offset + 2**20] = os.urandom(min(2**20, size - offset))
    return buffer


def child(variant: str, mb: int, connection_string: str, container: str) -> dict[str, Any]:
    """Measure one variant in this interpreter."""
    payload: bytes | bytearray = (
        random_buffer(mb * 2**20) if variant == "store-view" else os.urandom(mb * 2**20)
    )
    name = f"bench/{variant}.bin"
    expires = datetime.now(timezone.utc) + timedelta(hours=1)

    def run_raw(make_data: Callable[[], Any], **kwargs: Any) -> Measure:
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(connection_string) as service:
            service.get_blob_client(container, "warm/up.json").upload_blob(b"{}", overwrite=True)
            before, start = rss_peak_mb(), time.perf_counter()
            blob = service.get_blob_client(container, name)
            blob.upload_blob(make_data(), overwrite=True, **kwargs)
            return before, time.perf_counter() - start

    def run_store(data: bytes | memoryview) -> Measure:
        from claimcheck_bus.payloads import AzureBlobPayloadStore

        with AzureBlobPayloadStore.from_connection_string(connection_string, container) as store:
            store.upload(
                "warm/up.json", b"{}", content_type=OCTETS, metadata={}, sas_expires_on=expires
            )
            before, start = rss_peak_mb(), time.perf_counter()
            stored = store.upload(
                name, data, content_type=OCTETS, metadata={}, sas_expires_on=expires
            )
            assert stored.size == len(data)
            return before, time.perf_counter() - start

    async def run_async_store(data: bytes, **client_kwargs: Any) -> Measure:
        from claimcheck_bus.payloads import AsyncAzureBlobPayloadStore

        async with AsyncAzureBlobPayloadStore.from_connection_string(
            connection_string, container, **client_kwargs
        ) as store:
            await store.upload(
                "warm/up.json", b"{}", content_type=OCTETS, metadata={}, sas_expires_on=expires
            )
            before, start = rss_peak_mb(), time.perf_counter()
            stored = await store.upload(
                name, data, content_type=OCTETS, metadata={}, sas_expires_on=expires
            )
            assert stored.size == len(data)
            return before, time.perf_counter() - start

    def chunks(size: int = 4 * 2**20) -> Iterator[memoryview]:
        view = memoryview(payload)
        for offset in range(0, len(view), size):
            yield view[offset : offset + size]

    length = len(payload)
    if variant == "sdk-bytes":
        before, seconds = run_raw(lambda: payload, max_concurrency=4)
    elif variant == "sdk-bytesio":
        before, seconds = run_raw(lambda: io.BytesIO(payload), length=length, max_concurrency=4)
    elif variant == "sdk-chunks":
        before, seconds = run_raw(chunks, length=length, max_concurrency=4)
    elif variant == "store":
        before, seconds = run_store(bytes(payload))
    elif variant == "store-view":
        before, seconds = run_store(memoryview(payload)[1:])  # a buffer that is not bytes
    elif variant == "store-async":
        before, seconds = asyncio.run(run_async_store(bytes(payload)))
    elif variant == "store-async-single-put":
        # The SDK's default: one PUT up to 64 MiB, which aiohttp sends from copies.
        before, seconds = asyncio.run(
            run_async_store(bytes(payload), max_single_put_size=64 * 2**20)
        )
    else:
        raise SystemExit(f"unknown variant {variant}")
    return {
        "variant": variant,
        "mb": mb,
        "peak_above_baseline_mb": round(rss_peak_mb() - before, 1),
        "seconds": round(seconds, 2),
        "mb_per_s": round(mb / seconds, 1),
    }


def main() -> None:
    """Start Azurite, run each variant in its own interpreter, print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "MB", "CONNSTR", "CONTAINER"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.child:
        variant, mb, connection_string, container = args.child
        print(json.dumps(child(variant, int(mb), connection_string, container)))
        return

    from azure.storage.blob import BlobServiceClient

    from claimcheck_bus.testing.azurite import running_azurite

    with running_azurite([ROOT]) as azurite:
        container = f"bench-{int(time.time())}"
        with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            service.create_container(container)
        for variant in args.variants.split(","):
            command = [sys.executable, __file__, "--child", variant, str(args.mb)]
            result = subprocess.run(
                [*command, azurite.connection_string, container],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            lines = result.stdout.strip().splitlines()
            print(lines[-1] if lines else f"{variant}: failed\n{result.stderr[-3000:]}", flush=True)


if __name__ == "__main__":
    main()
