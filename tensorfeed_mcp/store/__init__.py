"""The state store: alert rules, their trigger state, queued alert messages and the spend ledger, keyed by token
fingerprint (never the token).

One interface, `Store`, with two backends: `sqlite` (one file on this machine, the default) and `postgres`
(shared by replicas, when TENSORFEED_MCP_DATABASE_URL is set). The rest of the code never knows which it has.
Both make the same decisions with the pure helpers in `store.base`, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tensorfeed_mcp.settings.environment import Settings, hosted_extra_missing
from tensorfeed_mcp.store.base import (
    OUTBOX_LEASE_SECONDS,
    STATE_FILE_NAME,
    AlertEvent,
    ChangeListener,
    Compose,
    Outbox,
    SaveAction,
    Store,
)

__all__ = [
    "OUTBOX_LEASE_SECONDS",
    "STATE_FILE_NAME",
    "AlertEvent",
    "ChangeListener",
    "Compose",
    "Outbox",
    "SaveAction",
    "Store",
    "open_store",
]


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The store the settings name: PostgreSQL at TENSORFEED_MCP_DATABASE_URL, else the SQLite file in the state
    folder (found on first use). PostgreSQL's schema is migrated here, before anything is served."""
    if settings.database_url:
        try:
            from tensorfeed_mcp.store.postgres import PostgresStore
        except ImportError:
            raise hosted_extra_missing("TENSORFEED_MCP_DATABASE_URL (PostgreSQL)") from None

        async with PostgresStore.open(settings.database_url) as store:
            yield store
        return
    from tensorfeed_mcp.store.sqlite import SqliteStore

    yield SqliteStore(lambda: settings.resolved_state_dir() / STATE_FILE_NAME)
