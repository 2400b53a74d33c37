"""Telemetry: what the server reports about its own work (tool calls, upstream requests, cache hits), behind a
small interface, so only the hosted mode pays for a metrics library. Nothing reported names a token or tenant."""

from __future__ import annotations

from typing import Literal, Protocol

CallOutcome = Literal["ok", "error"]


class Telemetry(Protocol):
    def tool_call(self, tool: str, outcome: CallOutcome) -> None:
        """A tool call ended."""

    def upstream_request(self, path: str, seconds: float) -> None:
        """An upstream request (one attempt) got an answer or failed after `seconds`."""

    def upstream_error(self, kind: str) -> None:
        """An upstream read or change failed for good with an error of this kind (its class name)."""

    def cache_hit(self, path: str) -> None:
        """A read was answered from the short cache or by joining a request already in flight."""


class NoTelemetry:
    """Reports nothing: the default for one user on one machine."""

    def tool_call(self, tool: str, outcome: CallOutcome) -> None:
        pass

    def upstream_request(self, path: str, seconds: float) -> None:
        pass

    def upstream_error(self, kind: str) -> None:
        pass

    def cache_hit(self, path: str) -> None:
        pass


NO_TELEMETRY = NoTelemetry()
