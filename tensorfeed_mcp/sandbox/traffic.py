"""Generated traffic: a validated spec of N premium calls spread evenly over a stretch of the sandbox's clock."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeGuard

MAX_CALLS = 100_000
MAX_SECONDS = 400 * 86_400
SERVICE_TIERS = (1, 5, 10, 50)
DEFAULT_ENDPOINTS: tuple[tuple[str, int], ...] = (
    ("/api/premium/routing", 1),
    ("/api/premium/news/search", 1),
    ("/api/premium/agents/directory", 5),
    ("/api/premium/whats-new", 10),
    ("/api/premium/monitor/bulk", 50),
)
DEFAULT_WEIGHTS = (40, 30, 15, 10, 5)
"""How often each of DEFAULT_ENDPOINTS is drawn: cheap calls are the common ones."""


@dataclass(frozen=True)
class TrafficSpec:
    calls: int
    seconds: float
    endpoints: tuple[tuple[str, int], ...] | None
    seed: int | None

    @classmethod
    def from_json(cls, spec: object) -> TrafficSpec:
        """Validate a control request's body; ValueError says what is wrong with it."""
        if not isinstance(spec, dict):
            raise ValueError('send a JSON object: {"calls": N, "seconds": S, "endpoints": ..., "seed": ...}')
        unknown = set(spec) - {"calls", "seconds", "endpoints", "seed"}
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
        calls, seconds, seed = spec.get("calls"), spec.get("seconds"), spec.get("seed")
        if not _is_int(calls) or not 1 <= calls <= MAX_CALLS:
            raise ValueError(f"calls must be an integer from 1 to {MAX_CALLS}")
        if not _is_number(seconds) or not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be a number above 0 and at most {MAX_SECONDS} (400 days)")
        if seed is not None and not _is_int(seed):
            raise ValueError("seed must be an integer or null")
        return cls(calls, float(seconds), _endpoints(spec.get("endpoints")), seed)

    def planned_calls(self, start: datetime) -> Iterator[tuple[str, int, datetime]]:
        """Call i of N (from 1) at start + i*seconds/N, its endpoint drawn with this spec's seed."""
        endpoints = self.endpoints or DEFAULT_ENDPOINTS
        weights = None if self.endpoints else DEFAULT_WEIGHTS
        drawn = random.Random(self.seed).choices(endpoints, weights, k=self.calls)
        for i, (endpoint, credits) in enumerate(drawn, start=1):
            yield endpoint, credits, start + timedelta(seconds=self.seconds * i / self.calls)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _endpoints(value: Any) -> tuple[tuple[str, int], ...] | None:
    """The `endpoints` field: null, or a non-empty list of [path, credits] pairs priced at the service's tiers."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError("endpoints must be null or a non-empty list of [path, credits] pairs")
    pairs = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"endpoint {pair!r} is not a [path, credits] pair")
        path, credits = pair
        if not isinstance(path, str) or not path.startswith("/api/"):
            raise ValueError(f"endpoint path {path!r} must be a string starting with /api/")
        if not _is_int(credits) or credits not in SERVICE_TIERS:
            raise ValueError(f"credits {credits!r} must be one of the service's tiers: 1, 5, 10 or 50")
        pairs.append((path, credits))
    return tuple(pairs)
