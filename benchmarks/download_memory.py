"""Peak memory of payload downloads: 100 MB from Azurite, each way in a fresh process.

Run by hand (about 20 s): ``.venv/bin/python benchmarks/download_memory.py [--mb 100]``.
Each mode runs in its own interpreter, so that one's high-water mark cannot hide another's;
the figure is peak RSS (VmHWM) minus RSS just before the download.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

MODES = ("fetch", "fetch_to_file", "async_fetch", "async_fetch_to_file", "httpx_content")
ROOT = Path(__file__).resolve().parent.parent


def rss_kib(field: str) -> int:
    """A ``/proc/self/status`` memory figure in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(mode: str, url: str, digest: str) -> None:
    """Download once in ``mode`` and print: mode, MB above baseline, MB/s."""
    import httpx

    from claimcheck_bus.claim_check.urls import TrustedEndpoint, check_payload_url
    from claimcheck_bus.payloads.download import (
        AsyncPayloadDownloader,
        DownloadPolicy,
        PayloadDownloader,
    )

    endpoint = TrustedEndpoint.parse(url.split("?", 1)[0].rsplit("/", 1)[0])
    location = check_payload_url(url, [endpoint])
    policy = DownloadPolicy(max_bytes=512 * 1024 * 1024)
    baseline = rss_kib("VmRSS")
    started = time.perf_counter()
    if mode == "fetch":
        with PayloadDownloader(policy) as downloader:
            data = downloader.fetch(location, sha256=digest)
        size = len(data)
    elif mode == "async_fetch":

        async def run() -> int:
            async with AsyncPayloadDownloader(policy) as downloader:
                data = await downloader.fetch(location, sha256=digest)
            # Not returned: on Python 3.11, asyncio.run() reprs the main task (its result
            # included) when it restores the SIGINT handler, which for 100 MB of bytes builds
            # a ~400 MB string.
            return len(data)

        size = asyncio.run(run())
    elif mode == "async_fetch_to_file":

        async def run_to(sink: BinaryIO) -> int:
            async with AsyncPayloadDownloader(policy) as downloader:
                return await downloader.fetch_to(location, sink, sha256=digest)

        with tempfile.TemporaryFile() as sink:
            size = asyncio.run(run_to(sink))
    elif mode == "fetch_to_file":
        with (
            tempfile.TemporaryFile() as sink,
            PayloadDownloader(policy) as downloader,
        ):
            size = downloader.fetch_to(location, sink, sha256=digest)
    else:
        data = httpx.get(url).content
        assert hashlib.sha256(data).hexdigest() == digest
        size = len(data)
    elapsed = time.perf_counter() - started
    peak = rss_kib("VmHWM")
    print(f"{mode} {(peak - baseline) / 1024:.1f} {size / elapsed / 1e6:.0f} {baseline / 1024:.0f}")


def main() -> None:
    """Start Azurite, upload the payload once, then measure each mode in a child process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "URL", "SHA256"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

    from claimcheck_bus.testing.azurite import running_azurite

    with running_azurite([ROOT]) as azurite, tempfile.TemporaryFile() as payload:
        digest = hashlib.sha256()
        for _ in range(args.mb):
            block = os.urandom(1024 * 1024)
            digest.update(block)
            payload.write(block)
        payload.seek(0)
        with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            service.create_container("bench")
            service.get_blob_client("bench", "payload.json").upload_blob(payload, max_concurrency=2)
        sas = generate_blob_sas(
            account_name=azurite.account_name,
            container_name="bench",
            blob_name="payload.json",
            account_key=azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(timezone.utc) + timedelta(minutes=30),
        )
        url = f"{azurite.blob_endpoint}/bench/payload.json?{sas}"
        print(f"{args.mb} MB payload; peak RSS above the pre-download RSS, per fresh process")
        print(f"{'mode':<21}{'peak MB':>9}{'MB/s':>7}{'base MB':>9}")
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, url, digest.hexdigest()],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            print(f"{out[0]:<21}{out[1]:>9}{out[2]:>7}{out[3]:>9}")


if __name__ == "__main__":
    main()
