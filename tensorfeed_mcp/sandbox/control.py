"""The control API under /_sandbox (counts, faults, the clock, accounts, traffic, ground truth) and its client."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import httpx2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tensorfeed_mcp.sandbox.accounts import iso, parse_time
from tensorfeed_mcp.sandbox.state import Sandbox, UnknownAccount
from tensorfeed_mcp.sandbox.traffic import TrafficSpec

Handler = Callable[[Request], Awaitable[Response]]


def _refusing_bad_input(handler: Handler) -> Handler:
    """A handler that answers 404 for an unknown account and 400 for a body it cannot use, instead of a 500."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except UnknownAccount as exc:
            return JSONResponse({"error": exc.args[0]}, status_code=404)
        except KeyError as exc:
            return JSONResponse({"error": f"missing field {exc.args[0]!r}"}, status_code=400)
        except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            return JSONResponse({"error": str(exc)}, status_code=400)

    return guarded


async def _body(request: Request) -> dict[str, Any]:
    body = json.loads(await request.body())
    if not isinstance(body, dict):
        raise ValueError("send a JSON object")
    return body


def _optional_time(spec: dict[str, Any]) -> datetime | None:
    at = spec.get("at")
    if at is None:
        return None
    if not isinstance(at, str):
        raise ValueError("at must be an ISO-8601 time or null")
    return parse_time(at)


def control_routes(sandbox: Sandbox) -> list[Route]:
    async def stats(request: Request) -> Response:
        if request.method == "POST":
            sandbox.reset_stats()
        return JSONResponse(sandbox.stats())

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            spec = await _body(request)
            if "set" in spec:
                sandbox.set_clock(parse_time(str(spec["set"])))
            else:
                sandbox.advance(float(spec["advance_seconds"]))
        return JSONResponse({"now": iso(sandbox.now()), "offset_seconds": sandbox.offset.total_seconds()})

    async def fault(request: Request) -> Response:
        if request.method == "DELETE":
            sandbox.clear_fault()
            return JSONResponse({"fault": None})
        spec = await request.json()
        try:
            sandbox.set_fault(**spec)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"fault": spec})

    async def create_account(request: Request) -> Response:
        spec = await _body(request)
        unknown = set(spec) - {"name", "balance", "daily_cap"}
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}; send name, balance and daily_cap")
        sandbox.create_account(spec["name"], spec["balance"], spec.get("daily_cap"))
        return JSONResponse(sandbox.describe(spec["name"]), status_code=201)

    async def account(request: Request) -> Response:
        return JSONResponse(sandbox.describe(request.path_params["name"]))

    async def calls(request: Request) -> Response:
        spec = await _body(request)
        accepted = sandbox.add_calls(
            request.path_params["name"],
            spec["endpoint"],
            int(spec["credits"]),
            int(spec.get("count", 1)),
            _optional_time(spec),
        )
        return JSONResponse({"accepted": accepted})

    async def purchases(request: Request) -> Response:
        spec = await _body(request)
        name, at = request.path_params["name"], _optional_time(spec)
        sandbox.add_purchase(name, int(spec["credits"]), float(spec["amount_usd"]), at)
        return JSONResponse({"ok": True})

    async def traffic(request: Request) -> Response:
        spec = TrafficSpec.from_json(json.loads(await request.body()))
        return JSONResponse(sandbox.generate_traffic(request.path_params["name"], spec))

    async def truth(request: Request) -> Response:
        return JSONResponse(sandbox.truth(request.path_params["name"]))

    return [
        Route("/_sandbox/stats", stats, methods=["GET", "POST"]),
        Route("/_sandbox/clock", _refusing_bad_input(clock), methods=["GET", "POST"]),
        Route("/_sandbox/fault", fault, methods=["POST", "DELETE"]),
        Route("/_sandbox/accounts", _refusing_bad_input(create_account), methods=["POST"]),
        Route("/_sandbox/accounts/{name}", _refusing_bad_input(account), methods=["GET"]),
        Route("/_sandbox/accounts/{name}/calls", _refusing_bad_input(calls), methods=["POST"]),
        Route("/_sandbox/accounts/{name}/purchases", _refusing_bad_input(purchases), methods=["POST"]),
        Route("/_sandbox/accounts/{name}/traffic", _refusing_bad_input(traffic), methods=["POST"]),
        Route("/_sandbox/accounts/{name}/truth", _refusing_bad_input(truth), methods=["GET"]),
    ]


class SandboxControl:
    """The control API of a running sandbox, for tests and the benchmark (synchronous, httpx2)."""

    def __init__(self, base_url: str) -> None:
        self._http = httpx2.Client(base_url=base_url + "/_sandbox/", timeout=10)

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self._json("GET", "stats")  # type: ignore[no-any-return]

    def upstream_requests(self) -> int:
        return int(self.stats()["requests"])

    def reset_stats(self) -> None:
        self._json("POST", "stats")

    def set_fault(self, mode: str, **options: Any) -> None:
        """Switch on `mode` with the options `Sandbox.set_fault` takes; a refused spec raises HTTPStatusError (400)."""
        self._json("POST", "fault", {"mode": mode, **options})

    def clear_fault(self) -> None:
        self._json("DELETE", "fault")

    def now(self) -> datetime:
        return parse_time(self._json("GET", "clock")["now"])

    def advance_clock(self, seconds: float) -> datetime:
        return parse_time(self._json("POST", "clock", {"advance_seconds": seconds})["now"])

    def set_clock(self, moment: datetime) -> datetime:
        """Make the sandbox's clock read `moment` now (forward or back in time); it runs on from there."""
        return parse_time(self._json("POST", "clock", {"set": iso(moment)})["now"])

    def account(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"accounts/{name}")  # type: ignore[no-any-return]

    def create_account(self, name: str, balance: int, daily_cap: int | None = None) -> dict[str, Any]:
        """Create an account with `balance` credits from one purchase and no calls, and answer its description.

        Its token is `sandbox_token(name)`. A name in use or not [a-z0-9-]{1,40} raises HTTPStatusError (400).
        """
        body = {"name": name, "balance": balance, "daily_cap": daily_cap}
        return self._json("POST", "accounts", body)  # type: ignore[no-any-return]

    def add_calls(self, name: str, endpoint: str, credits: int, count: int = 1, at: datetime | None = None) -> int:
        body = {"endpoint": endpoint, "credits": credits, "count": count, "at": iso(at) if at else None}
        return int(self._json("POST", f"accounts/{name}/calls", body)["accepted"])

    def add_purchase(self, name: str, credits: int, amount_usd: float, at: datetime | None = None) -> None:
        """Add a purchase confirmed at `at` (default: the sandbox's now); the balance rises at once either way."""
        body = {"credits": credits, "amount_usd": amount_usd, "at": iso(at) if at else None}
        self._json("POST", f"accounts/{name}/purchases", body)

    def traffic(
        self,
        name: str,
        calls: int,
        seconds: float,
        endpoints: Sequence[tuple[str, int]] | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Make `calls` premium calls evenly over the next `seconds` of the sandbox clock, then move the clock on.

        Endpoints are drawn (reproducibly for a seed) from `endpoints`, or from the service's tiers weighted
        towards cheap calls. Answers {"made", "refused_no_credits", "refused_by_cap", "now"}; a refused spec
        raises HTTPStatusError (400).
        """
        body = {
            "calls": calls,
            "seconds": seconds,
            "endpoints": [list(pair) for pair in endpoints] if endpoints is not None else None,
            "seed": seed,
        }
        return self._json("POST", f"accounts/{name}/traffic", body)  # type: ignore[no-any-return]

    def truth(self, name: str) -> dict[str, Any]:
        """The account's ground truth: every call ever made and per UTC day, purchases, balance and lifetime spend."""
        return self._json("GET", f"accounts/{name}/truth")  # type: ignore[no-any-return]

    def close(self) -> None:
        self._http.close()
