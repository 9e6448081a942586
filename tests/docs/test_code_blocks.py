"""Every Python block of README.md and docs/ runs here, or is marked as a fragment.

A page's runnable blocks run in order in one namespace, as a reader would paste them, against
the emulator and Azurite through ``bus_settings`` (the page's own queue and container, set as
the ``CLAIMCHECK_*`` variables the examples read), in a temporary working directory. Markers,
an HTML comment on the line before a fence (docs/conventions.md):

- ``<!-- fragment -->``: a piece of a larger program; it must still compile.
- ``<!-- until: FILE TABLE [CONDITION] -->``: a worker that runs until stopped. It runs in a
  thread until SQLite ``FILE`` has a row in ``TABLE`` (matching the SQL ``CONDITION`` if
  given), then ``worker.stop()`` ends it.

A page holding ``<!-- docs-test: session queue -->`` gets a default queue that requires
sessions (its examples publish to and consume sessions from it).

Functions named ``test_*`` that a block defines are called with the page's ``bus_settings``.
"""

from __future__ import annotations

import re
import sqlite3
import textwrap
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>fragment|until:)\s*(?P<arg>.*?)\s*-->\s*$")
SESSION_QUEUE = "<!-- docs-test: session queue -->"
#: How long a worker example may take to project its event (start-up included).
WORKER_DEADLINE = 60.0


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page."""

    page: Path
    line: int
    code: str
    marker: str | None
    argument: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    """The page's Python blocks with the marker on the line before each, if any."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        if opening["lang"] == "python":
            marker = MARKER.match(lines[index - 1]) if index else None
            blocks.append(
                Block(
                    page=page,
                    line=index + 1,
                    code=textwrap.dedent("\n".join(lines[index + 1 : end])),
                    marker=marker["kind"].rstrip(":") if marker else None,
                    argument=marker["arg"] if marker else "",
                )
            )
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in python_blocks(page)]
RUNNABLE_PAGES = sorted({b.page for b in ALL_BLOCKS if b.marker != "fragment"})


def test_the_documents_have_python_blocks_of_both_kinds() -> None:
    # Guards the collector: a fence pattern that matched nothing would pass every other test.
    assert len([b for b in ALL_BLOCKS if b.marker == "fragment"]) >= 5
    assert len([b for b in ALL_BLOCKS if b.marker != "fragment"]) >= 5
    assert any(b.marker == "until" for b in ALL_BLOCKS), "the worker example must run"


def test_every_marker_sits_right_before_a_python_block() -> None:
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if MARKER.match(line):
                following = lines[number + 1] if number + 1 < len(lines) else ""
                assert following.strip() == "```python", (
                    f"{page.relative_to(ROOT)}:{number + 1}: a marker must be the line right "
                    "before a ```python fence"
                )


@pytest.mark.parametrize(
    "block",
    [b for b in ALL_BLOCKS if b.marker == "fragment"],
    ids=lambda b: b.where,
)
def test_fragments_compile(block: Block) -> None:
    compile(block.code, block.where, "exec")


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(
    page: Path,
    bus_settings: BusSettings,
    servicebus: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    if SESSION_QUEUE in page.read_text(encoding="utf-8"):
        monkeypatch.setenv("CLAIMCHECK_SERVICE_BUS__DEFAULT_QUEUE_NAME", _session_queue(servicebus))
        bus_settings = BusSettings()
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in python_blocks(page):
        if block.marker == "fragment":
            continue
        before = set(namespace)
        code = compile(block.code, block.where, "exec")
        if block.marker == "until":
            _run_worker_until_projected(code, namespace, block, tmp_path)
        else:
            exec(code, namespace)  # noqa: S102 - the documentation's own examples
        for name in sorted(set(namespace) - before):
            if name.startswith("test_") and callable(namespace[name]):
                namespace[name](bus_settings)


def _session_queue(servicebus: Any) -> str:
    from claimcheck_bus.emulator.config import EntityOptions, QueueConfig

    if not hasattr(servicebus, "call"):
        pytest.skip("a page with a session queue needs the in-process emulator to create it")
    queue = QueueConfig(
        f"docs-sessions-{uuid.uuid4().hex[:12]}",
        EntityOptions(lock_duration=timedelta(seconds=5), requires_session=True),
    )
    servicebus.call(lambda broker: broker.add_queue(queue))
    return queue.name


def _run_worker_until_projected(
    code: Any, namespace: dict[str, Any], block: Block, folder: Path
) -> None:
    database, table, *condition = block.argument.split(maxsplit=2)
    where = f" WHERE {condition[0]}" if condition else ""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            exec(code, namespace)  # noqa: S102 - the documentation's own examples
        except BaseException as error:
            failures.append(error)

    def projected() -> bool:
        if failures:
            raise failures[0]
        path = folder / database
        if not path.exists():
            return False
        with sqlite3.connect(path) as db:
            try:
                return db.execute(f"SELECT count(*) FROM {table}{where}").fetchone()[0] > 0  # noqa: S608
            except sqlite3.OperationalError:  # the projection has not created it yet
                return False

    thread = threading.Thread(target=run, name=f"docs-worker {block.where}", daemon=True)
    thread.start()
    try:
        wait_for(projected, timeout=WORKER_DEADLINE, what=f"{block.where} to project its event")
    finally:
        worker = namespace.get("worker")
        if worker is not None:
            worker.stop()
        thread.join(30)
    assert not thread.is_alive(), f"{block.where}: the worker did not stop"
    if failures:
        raise failures[0]
