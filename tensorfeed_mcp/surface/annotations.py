"""The tool annotations the surface's tools share: whether a tool changes anything, and where (on this machine, or
at the service)."""

from __future__ import annotations

from mcp.types import ToolAnnotations


def _changes(*, destructive: bool, at_service: bool) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False, destructive_hint=destructive, idempotent_hint=True, open_world_hint=at_service
    )


READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=True)
LOCAL_WRITE = _changes(destructive=False, at_service=False)
LOCAL_DELETE = _changes(destructive=True, at_service=False)
SERVICE_WRITE = _changes(destructive=False, at_service=True)
SERVICE_DELETE = _changes(destructive=True, at_service=True)
