"""Waiting for a condition without sleeping a fixed time."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def eventually(condition: Callable[[], bool], within: float) -> None:
    """Wait until `condition` holds, checking often; fail after `within` seconds."""
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.01)
