"""What every answer carries and how reads are made together: the stamp (as of, age, the masked token, notes on
what the figures cannot show), and concurrent reads that report each failure on its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from tensorfeed_mcp.core.ledger import to_ms
from tensorfeed_mcp.errors import UpstreamError
from tensorfeed_mcp.models import UsageEntry, UsagePayload
from tensorfeed_mcp.settings.identity import Tenant
from tensorfeed_mcp.upstream.client import Fetched

ANSWER_SLACK_MS = 1000  # the Date header has whole seconds: a call may be up to a second later than it says


def stamp(tenant: Tenant, fetched: Fetched[Any], *also: Fetched[Any]) -> dict[str, Any]:
    """The fields every result carries, from `fetched`; the note covers `also` too."""
    return {
        "as_of": fetched.as_of,
        "age_seconds": fetched.age_seconds,
        "token": tenant.masked,
        "note": " ".join(dict.fromkeys(notes(fetched, *also))) or None,
    }


def notes(*fetched: Fetched[Any]) -> list[str]:
    """What the answers' figures cannot show: a clock not believed, calls dated after the answer that listed them."""
    found = []
    for value in fetched:
        if value.clock_note is not None:
            found.append(value.clock_note)
        elif isinstance(value.data, UsagePayload):
            late = len(value.data.recent) - len(listed_in_time(value))
            if late:
                found.append(
                    f"TensorFeed listed {late} call{'s' if late > 1 else ''} dated after its own answer, which "
                    "cannot be right; they were kept out of the spend ledger."
                )
    return found


def listed_in_time(usage: Fetched[UsagePayload]) -> list[UsageEntry]:
    """The calls a usage answer lists that happened before it was given; a call dated later cannot be true."""
    latest = to_ms(usage.as_of) + ANSWER_SLACK_MS
    return [entry for entry in usage.data.recent if to_ms(entry.at) <= latest]


async def read_together(
    **reads: Callable[[], Awaitable[Fetched[Any]]],
) -> tuple[dict[str, Fetched[Any]], dict[str, UpstreamError]]:
    """Run the reads concurrently; what each one fetched, and how each one that failed failed."""
    fetched: dict[str, Fetched[Any]] = {}
    failures: dict[str, UpstreamError] = {}

    async def read(name: str, fetch: Callable[[], Awaitable[Fetched[Any]]]) -> None:
        try:
            fetched[name] = await fetch()
        except UpstreamError as exc:
            failures[name] = exc

    async with anyio.create_task_group() as group:
        for name, fetch in reads.items():
            group.start_soon(read, name, fetch)
    return fetched, failures
