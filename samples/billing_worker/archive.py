"""The ``invoices/archive`` subscriber: keeps every issued invoice document as files."""

from __future__ import annotations

import os
from pathlib import Path

from claimcheck_bus.worker import EventContext
from samples.events import InvoiceIssued


class InvoiceArchive:
    """Writes ``{invoice_id}.json`` (the event) and ``.txt`` (the document) into a folder.

    At-least-once delivery makes a repeat possible: writing the same file again is harmless,
    and each file appears whole (written aside, then renamed) or not at all.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: InvoiceIssued, context: EventContext) -> None:
        """Archive one invoice (runs in a worker thread)."""
        self._write(f"{event.invoice_id}.txt", event.document.encode())
        # The JSON last: its presence means the invoice is fully archived.
        self._write(f"{event.invoice_id}.json", event.model_dump_json(by_alias=True).encode())

    def _write(self, name: str, data: bytes) -> None:
        target = self.folder / name
        partial = target.with_name(f".{name}.{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(target)
