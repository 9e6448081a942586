# Generated from claimcheck_bus/_async/__init__.py by scripts/unasync.py: do not edit.
"""The library's I/O: the clients, the payload reader and downloader, and the payload stores.

The modules of the ``_async`` folder are the only source; ``scripts/unasync.py`` generates their
blocking twins in the ``_sync`` folder. Decisions live in :mod:`claimcheck_bus.claim_check` and
:mod:`claimcheck_bus.payloads`; the public names are exported from :mod:`claimcheck_bus`.
"""
