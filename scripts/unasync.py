"""Generate the blocking twins in ``src/claimcheck_bus/_sync`` from ``src/claimcheck_bus/_async``.

The async modules are the only source: this script rewrites them token by token (``async def``
to ``def``, ``await`` dropped, ``AsyncFoo`` to ``Foo``, ``aio`` SDK modules to their blocking
ones), then sorts imports and formats with ruff, so the output is stable. Two markers cover what
really differs:

- lines between ``# async-only:start`` and ``# async-only:end``, and any line ending in
  ``# async-only``, are left out of the sync twin;
- ``# sync-only: <code>`` becomes ``<code>`` in the sync twin.

Imports need no marker: an import only async code uses is dropped by ruff as unused.

``python scripts/unasync.py`` rewrites the twins; ``--check`` only reports stale ones (exit 1),
which ``make test`` runs so the two can never drift.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "claimcheck_bus" / "_async"
TARGET = ROOT / "src" / "claimcheck_bus" / "_sync"

# Order matters: module paths before the generic Async-prefix rule.
SUBSTITUTIONS = [
    (r"claimcheck_bus\._async\b", "claimcheck_bus._sync"),
    (r"\bazure\.servicebus\.aio\b", "azure.servicebus"),
    (r"\bazure\.storage\.blob\.aio\b", "azure.storage.blob"),
    (r"\bazure\.identity\.aio\b", "azure.identity"),
    (r"\bazure\.core\.credentials_async\b", "azure.core.credentials"),
    (r"\bfrom asyncio import Lock\b", "from threading import Lock"),
    (r"\bfrom asyncio import sleep\b", "from time import sleep"),
    (r"\basynchronous=True\b", "asynchronous=False"),
    (r"\bdefault_async_credential\b", "default_credential"),
    (r"\bmax_message_size_async\b", "max_message_size"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\baiter_raw\b", "iter_raw"),
    (r"\baiter_bytes\b", "iter_bytes"),
]
_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in SUBSTITUTIONS]
_SYNC_ONLY = re.compile(r"^(\s*)# sync-only: (.*)$")
HEADER = "# Generated from claimcheck_bus/_async/{name} by scripts/unasync.py: do not edit.\n"


def unasync_text(text: str) -> str:
    """The sync twin of one async module's text, before formatting."""
    lines: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == "# async-only:start":
            skipping = True
            continue
        if stripped == "# async-only:end":
            skipping = False
            continue
        if skipping or line.rstrip().endswith("# async-only"):
            continue
        sync_only = _SYNC_ONLY.match(line.rstrip("\n"))
        if sync_only:
            line = f"{sync_only.group(1)}{sync_only.group(2)}\n"
        for pattern, replacement in _COMPILED:
            line = pattern.sub(replacement, line)
        lines.append(line)
    if skipping:
        raise ValueError("an '# async-only:start' has no '# async-only:end'")
    return "".join(lines)


def _ruff(arguments: list[str], text: str, name: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, "--stdin-filename", str(TARGET / name), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode not in (0, 1):
        raise RuntimeError(f"ruff {' '.join(arguments)} failed on {name}: {result.stderr}")
    return result.stdout


def generate(source: Path) -> str:
    """The formatted sync twin of ``source``."""
    text = HEADER.format(name=source.name) + unasync_text(source.read_text())
    # Unused imports and noqa comments (their async-only use removed), merged module paths,
    # then layout.
    text = _ruff(["check", "--select", "I,F401,RUF100", "--fix-only", "--quiet"], text, source.name)
    return _ruff(["format", "--quiet"], text, source.name)


def main(argv: list[str] | None = None) -> int:
    """Write the sync twins, or with ``--check`` report the stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale twins, write nothing")
    args = parser.parse_args(argv)
    TARGET.mkdir(exist_ok=True)
    expected = {source.name: generate(source) for source in sorted(SOURCE.glob("*.py"))}
    stale = [
        name
        for name, text in expected.items()
        if not (TARGET / name).exists() or (TARGET / name).read_text() != text
    ]
    orphans = sorted(p.name for p in TARGET.glob("*.py") if p.name not in expected)
    if args.check:
        for name in stale:
            print(f"stale: src/claimcheck_bus/_sync/{name} (run python scripts/unasync.py)")
        for name in orphans:
            print(f"orphan: src/claimcheck_bus/_sync/{name} has no async source")
        return 1 if stale or orphans else 0
    for name in stale:
        (TARGET / name).write_text(expected[name])
        print(f"wrote src/claimcheck_bus/_sync/{name}")
    for name in orphans:
        (TARGET / name).unlink()
        print(f"removed src/claimcheck_bus/_sync/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
