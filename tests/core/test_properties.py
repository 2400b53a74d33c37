"""Property (issue 8): whatever arguments a client sends and whatever the service answers, every tool answer is
either a typed result (structuredContent valid against the tool's outputSchema) or a tool error with a specific,
bounded message, and the server keeps serving.

One server per property run: the installed console script over stdio, driven by the SDK's Client in a background
event loop, against the sandbox over real HTTP (upstream answers come from its `custom` fault mode).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import unicodedata
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar, get_args

import httpx2
import jsonschema
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult

from tensorfeed_mcp.models import AlertKind
from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tests.support.clients import error_text
from tests.support.env import settings_for
from tests.support.records import read_recorded, record
from tests.support.servers import stdio_params

T = TypeVar("T")
ACCOUNT = "busy"
TIMEOUT_SECONDS = 0.5  # per upstream request; a retried 5xx costs at most twice this
CALL_TIMEOUT_SECONDS = 20.0  # a tool call that takes longer than this has hung: a failure in itself
MAX_ERROR_CHARS = 600
ARGUMENT_ECHO_LIMIT = 80  # errors quote 40 characters of a value, and may list saved rule names (at most 64)
UPSTREAM_ECHO_LIMIT = 200  # upstream text is cut to 200 characters wherever it is shown
GENERIC_ERRORS = ("Error executing tool", "validation error for", "pydantic", "unexpectedly", "Traceback")
CLASS_NAME = re.compile(r"\b\w+(Error|Exception)\b")
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
MIN_DISTINCT_ERRORS = 5

# Which upstream paths each read tool asks, so generated answers can resemble what the tool expects.
READ_TOOL_PATHS: dict[str, tuple[str, ...]] = {
    "get_account_balance": ("balance",),
    "get_account_usage": ("usage",),
    "get_payment_history": ("history",),
    "get_spend_cap": ("spend-cap",),
    "check_spend_alerts": ("balance", "usage", "spend-cap"),
}


@dataclass
class Observed:
    """What a property run saw: every error message, and how many typed results."""

    errors: list[str] = field(default_factory=list)
    results: int = 0

    def assert_varied(self) -> None:
        assert self.results > 0, "no call succeeded: the run never reached the typed-result path"
        distinct = set(self.errors)
        assert len(distinct) >= MIN_DISTINCT_ERRORS, f"too few distinct errors to trust the run: {distinct}"


@dataclass
class StdioServer:
    """A connected Client to the console script over stdio, callable from synchronous code."""

    portal: BlockingPortal
    client: Client
    schemas: dict[str, dict[str, Any]]
    parameters: dict[str, dict[str, dict[str, Any]]]
    """Each tool's input schema properties: argument names and their schemas."""

    def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        call = functools.partial(self.client.call_tool, tool, arguments, read_timeout_seconds=CALL_TIMEOUT_SECONDS)
        result = self.portal.call(call)
        record(result.model_dump_json())
        return result

    def ok(self, tool: str) -> dict[str, Any]:
        result = self.call(tool, {})
        assert not result.is_error, f"{tool} failed: {error_text(result)}"
        structured: dict[str, Any] | None = result.structured_content
        assert structured is not None
        return structured

    def assert_still_serving(self, sandbox: RunningSandbox) -> None:
        """With no fault, get_account_balance answers the sandbox's balance (so the process is alive and well)."""
        sandbox.control.clear_fault()
        assert self.ok("get_account_balance")["balance"] == sandbox.control.account(ACCOUNT)["balance"]


@asynccontextmanager
async def connected(
    portal: BlockingPortal, sandbox: RunningSandbox, state_dir: Path, errlog: TextIO
) -> AsyncIterator[StdioServer]:
    """A Client over stdio to the console script; made inside the portal's event loop, which it must live in."""
    params = stdio_params(settings_for(sandbox, state_dir, ACCOUNT, timeout_seconds=TIMEOUT_SECONDS))
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client(stdio_client(params, errlog=errlog)))
        tools = (await client.list_tools()).tools
        yield StdioServer(
            portal=portal,
            client=client,
            schemas={tool.name: tool.output_schema or {} for tool in tools},
            parameters={tool.name: tool.input_schema.get("properties", {}) for tool in tools},
        )


@contextmanager
def stdio_server(sandbox: RunningSandbox, tmp_path: Path) -> Iterator[StdioServer]:
    """Serve for the block; afterwards the server's stderr is recorded and must hold no traceback."""
    stderr = tmp_path / "stderr.log"
    with (
        stderr.open("w") as errlog,
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(connected(portal, sandbox, tmp_path / "state", errlog)) as server,
    ):
        yield server
    assert "Traceback" not in read_recorded(stderr)


def strings_in(value: object) -> Iterator[str]:
    """Every string in a JSON-like value, dictionary keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def echoed_run(texts: Iterable[str], message: str, limit: int) -> str | None:
    """A run of more than `limit` characters of one of `texts` that `message` repeats, if any."""
    for text in texts:
        for start in range(len(text) - limit):
            run = text[start : start + limit + 1]
            if run in message:
                return run
    return None


def assert_typed_or_specific(
    server: StdioServer, tool: str, result: CallToolResult, sent: Iterable[str], echo_limit: int, seen: Observed
) -> None:
    """The property: a result valid against the tool's outputSchema, or an error that says what went wrong."""
    if not result.is_error:
        assert result.structured_content is not None, f"{tool} succeeded without structuredContent"
        jsonschema.validate(result.structured_content, server.schemas[tool])
        seen.results += 1
        return
    assert result.structured_content is None
    message = error_text(result)
    seen.errors.append(message)
    detail = message.removeprefix(f"Error executing tool {tool}: ").strip()
    assert detail, f"{tool} gave an empty error: {message!r}"
    for generic in GENERIC_ERRORS:
        assert generic not in detail, f"{tool} gave a generic error: {message!r}"
    assert not CLASS_NAME.search(detail), f"{tool}'s error names an internal class: {message!r}"
    assert len(message) < MAX_ERROR_CHARS, f"{tool}'s error has {len(message)} characters: {message[:300]!r}…"
    unsafe = sorted({char for char in message if unicodedata.category(char) in UNSAFE_CATEGORIES})
    assert not unsafe, f"{tool}'s error carries control or format characters {unsafe}: {message!r}"
    echoed = echoed_run(sent, message, echo_limit)
    assert echoed is None, f"{tool}'s error repeats {len(echoed or '')} characters of what it was sent: {message!r}"


# ---- Generated values ---------------------------------------------------------------------------------------

# Past 64 bits, and past what a float can hold (2**1024): arithmetic that mixes them with floats overflows.
HUGE_INTEGERS = st.sampled_from([2**31, 2**53 + 1, 2**63, -(2**63) - 1, 10**30, 2**1024, -(10**309)])
LONG_TEXTS = st.builds(lambda unit, times: unit * times, st.text(min_size=1, max_size=5), st.integers(40, 1000))
TEXTS = st.text(max_size=40) | st.text(min_size=200, max_size=3000) | LONG_TEXTS
SCALARS = st.none() | st.booleans() | st.integers() | HUGE_INTEGERS | st.floats() | TEXTS
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Draw from one of `choices`, picked in proportion to its weight; the first is what examples shrink to."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


def near_misses(names: list[str]) -> st.SearchStrategy[str]:
    """Argument names a client might get wrong: typos, case, plurals, prefixes."""
    variants = {variant for name in names for variant in (name[:-1], name.upper(), name + "s", "_" + name)}
    return st.sampled_from(sorted(variants)) if variants else st.nothing()


def near_valid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the type an argument's input schema names, in and just outside its bounds."""
    if "anyOf" in schema:
        return st.one_of([near_valid(option) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "integer":
        low, high = schema.get("minimum", -(10**6)), schema.get("maximum", 10**6)
        return st.integers(low - 2, high + 2) | st.sampled_from([low - 1, low, high, high + 1])
    if kind == "number":
        return st.floats(-10, 1000) | st.integers(-10, 1000)
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 200) + 5)
    return st.none()


def domain_values(sandbox: RunningSandbox) -> dict[str, st.SearchStrategy[Any]]:
    """Values a user would give, for arguments whose schema says only "text": the sandbox's endpoints and the
    alert kinds (which are also the default rule names)."""
    endpoints = sorted({call["endpoint"] for call in sandbox.control.account(ACCOUNT)["calls"]})
    fragments = sorted({part for endpoint in endpoints for part in endpoint.split("/") if part})
    kinds = st.sampled_from(get_args(AlertKind))
    return {"endpoint": st.sampled_from(endpoints + fragments), "kind": kinds, "name": kinds}


def argument_values(schema: dict[str, Any], domain: st.SearchStrategy[Any] | None) -> st.SearchStrategy[Any]:
    typed = near_valid(schema) if domain is None else weighted((1, domain), (1, near_valid(schema)))
    return weighted((3, typed), (1, JSON_VALUES))


def tool_arguments(
    properties: dict[str, dict[str, Any]], domain: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly every real argument, else some; each with a near-valid or a junk value; now and then junk names."""
    names = list(properties)
    real = st.fixed_dictionaries(
        {}, optional={name: argument_values(schema, domain.get(name)) for name, schema in properties.items()}
    )
    if names:
        every = st.fixed_dictionaries({name: argument_values(properties[name], domain.get(name)) for name in names})
        real = weighted((2, every), (1, real))
    junk_names = st.text(max_size=30) | near_misses(names) | TEXTS
    junk = weighted((4, st.just({})), (1, st.dictionaries(junk_names, JSON_VALUES, min_size=1, max_size=2)))
    return st.builds(lambda given, extra: {**extra, **given}, real, junk)


@dataclass(frozen=True)
class UpstreamAnswer:
    """What the sandbox serves, through its `custom` fault, for every request until cleared."""

    status: int
    body: str
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def texts(self) -> Iterator[str]:
        """Every piece of text in the answer that a message could repeat."""
        yield self.body
        yield from self.headers.values()
        with suppress(ValueError, RecursionError):  # not JSON, or too deep to read
            yield from strings_in(json.loads(self.body))


# Mostly 200, so most answers reach parsing; 5xx and 429 are few because each one is retried to the deadline.
STATUSES = weighted(
    (12, st.just(200)),
    (1, st.sampled_from([201, 202, 204, 206])),
    (1, st.sampled_from([301, 302, 303, 304, 307, 308])),
    (1, st.sampled_from([400, 401, 402, 403, 404, 405, 409, 422])),
    (1, st.sampled_from([429, 500, 502, 503])),
)
ODD_CONTENT_TYPES = st.sampled_from(
    [
        *("application/json", "application/json; charset=utf-8", "application/problem+json", "APPLICATION/JSON"),
        *("text/html", "text/plain", "", "application/octet-stream"),
    ]
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=120)
HEADER_VALUES: dict[str, st.SearchStrategy[str]] = {
    "retry-after": st.sampled_from(["0", "-1", "0.5", "1e309", "nan", "inf", "99999999999999999999"]) | HEADER_TEXT,
    "date": st.sampled_from(
        [
            "Mon, 01 Jan 0001 00:00:00 +1400",
            "Fri, 31 Dec 9999 23:59:59 -1200",
            "Thu, 01 Jan 1970 00:00:00 -0000",
            "Tue, 29 Feb 2000 12:00:00 GMT",
        ]
    )
    | HEADER_TEXT,
    "location": st.sampled_from(["https://elsewhere.example.net/x", "//evil.example", "http://[::1", "ftp://x"])
    | HEADER_TEXT.map(lambda text: "https://" + text),
    "content-encoding": st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "gzip, gzip", "compress"]),
    "x-tensorfeed-note": HEADER_TEXT,
}
CONTENT_TYPES = weighted((5, st.just("application/json")), (1, ODD_CONTENT_TYPES))
HEADERS = weighted((5, st.just({})), (1, st.fixed_dictionaries({}, optional=HEADER_VALUES)))


def dumped(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """JSON text of the values, NaN and Infinity included, escaped to ASCII or not."""
    return st.builds(lambda value, ascii_only: json.dumps(value, ensure_ascii=ascii_only), values, st.booleans())


OK_WITH_JUNK = st.dictionaries(st.text(max_size=20), JSON_VALUES, max_size=6).map(lambda junk: {**junk, "ok": True})


@st.composite
def place_in(draw: st.DrawFn, value: Any) -> tuple[Any, Any] | None:
    """A place inside `value` (a container and a key in it): a top-level field, then maybe deeper, so every field
    is as likely as another however long the lists beside it. None when `value` holds nothing."""
    place = None
    while isinstance(value, dict | list) and value and (place is None or draw(st.booleans())):
        key = draw(st.sampled_from(list(value) if isinstance(value, dict) else range(len(value))))
        place, value = (value, key), value[key]
    return place


ODD_NUMBERS = (
    st.sampled_from([0, -1, 0.5, 1e308, float("nan"), float("inf"), True, "12"])
    | HUGE_INTEGERS
    | st.integers()
    | st.floats()
)
ODD_TIMES = st.sampled_from(
    [
        *("2026-04-27T17:30:00", "2026-04-27", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00"),
        *("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-02-30T00:00:00Z", "1970-01-01T00:00:00Z", "today"),
    ]
)
WRONG_VALUES = ODD_NUMBERS | ODD_TIMES | SCALARS | JSON_VALUES


def wrong_for(value: Any) -> st.SearchStrategy[Any]:
    """A wrong value, most often one that looks like `value` at a glance: odd numbers for a number, odd times
    for text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return weighted((3, ODD_NUMBERS), (1, WRONG_VALUES))
    if isinstance(value, str):
        return weighted((2, ODD_TIMES), (1, TEXTS), (1, WRONG_VALUES))
    return WRONG_VALUES


@st.composite
def mutated(draw: st.DrawFn, real: Any) -> Any:
    """`real` with a few of its values replaced by wrong ones, removed, or (lists and objects) repeated."""
    value = copy.deepcopy(real)
    for _ in range(draw(st.integers(0, 3))):
        place = draw(place_in(value))
        if place is None:
            break
        holder, key = place
        target = holder[key]
        change = draw(st.sampled_from(["replace", "remove", "repeat"]))
        if change == "remove" and isinstance(holder, dict):
            del holder[key]
        elif change == "repeat" and isinstance(target, list | dict):
            times = draw(st.sampled_from([2, 60, 400]))
            holder[key] = target * times if isinstance(target, list) else repeated(target, times)
        else:
            holder[key] = draw(wrong_for(target))
    return value


def repeated(entries: dict[str, Any], times: int) -> dict[str, Any]:
    return {f"{name}/{copy_number}": entry for copy_number in range(times) for name, entry in entries.items()}


def answers(real: Any) -> st.SearchStrategy[UpstreamAnswer]:
    """Answers to a request whose well-formed answer is `real`: mutated, arbitrary, cut short or not JSON."""
    real_text = json.dumps(real)
    bodies = weighted(
        (8, dumped(mutated(real))),
        (1, dumped(JSON_VALUES)),
        (1, dumped(OK_WITH_JUNK)),
        (1, st.integers(0, len(real_text) - 1).map(lambda cut: real_text[:cut])),
        (1, st.text(max_size=2000)),
        (1, st.binary(max_size=2000).map(lambda raw: raw.decode("latin-1"))),
    )
    return st.builds(
        lambda status, body, content_type, headers: UpstreamAnswer(
            status, "" if status in (204, 304) else body, content_type, headers
        ),
        STATUSES,
        bodies,
        CONTENT_TYPES,
        HEADERS,
    )


def real_answers(sandbox: RunningSandbox) -> dict[str, dict[str, Any]]:
    """For each read tool, the sandbox's own answers (without a fault) to the paths it reads, merged into one:
    the fault answers every path alike, and each path ignores the others' fields."""
    headers = {"Authorization": f"Bearer {DEMO_TOKENS[ACCOUNT]}"}
    every_path = {path for paths in READ_TOOL_PATHS.values() for path in paths}
    by_path = {
        path: httpx2.get(f"{sandbox.api_url}/payment/{path}", headers=headers, timeout=10).raise_for_status().json()
        for path in every_path
    }
    return {
        tool: {name: value for path in paths for name, value in by_path[path].items()}
        for tool, paths in READ_TOOL_PATHS.items()
    }


def serve(sandbox: RunningSandbox, answer: UpstreamAnswer) -> None:
    sandbox.control.set_fault(
        "custom", status=answer.status, body=answer.body, content_type=answer.content_type, headers=answer.headers
    )


PROPERTY_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- The properties ---------------------------------------------------------------------------------------------


def test_generated_tool_arguments_get_a_typed_result_or_a_specific_error(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Any arguments to any tool: a typed result or a specific error, and the server still serves afterwards."""
    seen = Observed()
    domain = domain_values(sandbox)
    with stdio_server(sandbox, tmp_path) as server:
        calls = st.sampled_from(sorted(server.parameters)).flatmap(
            lambda tool: st.tuples(st.just(tool), tool_arguments(server.parameters[tool], domain))
        )

        @settings(PROPERTY_SETTINGS, max_examples=250)
        @given(call=calls)
        @example(call=("get_account_usage", {"endpoit": "routing"}))
        @example(call=("get_account_usage", {"endpoint": "x" * 100_000}))
        @example(call=("set_spend_cap", {"daily_cap": None}))
        @example(call=("set_spend_cap", {"daily_cap": float("nan")}))
        @example(call=("set_spend_cap", {}))
        @example(call=("set_spend_alert", {"kind": "balance_below", "threshold": float("inf")}))
        @example(call=("delete_spend_alert", {"name": "\u202e" * 5_000}))
        @example(call=("check_spend_alerts", {"\U000e0001" * 50: 1, "\U000e0002" * 50: 2}))  # escapes lengthen names
        def any_arguments(call: tuple[str, dict[str, Any]]) -> None:
            tool, arguments = call
            result = server.call(tool, arguments)
            sent = [text for text in strings_in(arguments) if len(text) > ARGUMENT_ECHO_LIMIT]
            assert_typed_or_specific(server, tool, result, sent, ARGUMENT_ECHO_LIMIT, seen)
            server.assert_still_serving(sandbox)

        any_arguments()
        server.assert_still_serving(sandbox)
    seen.assert_varied()


def test_generated_upstream_answers_get_a_typed_result_or_a_specific_error(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Any answer from the service to any read tool: a typed result that carries the service's numbers unchanged,
    or a specific error; and once the service behaves again, the server answers normally."""
    seen = Observed()
    real = real_answers(sandbox)
    with stdio_server(sandbox, tmp_path) as server:
        add_one_rule_of_each_kind(server, sandbox)
        exchanges = st.sampled_from(sorted(real)).flatmap(lambda tool: st.tuples(st.just(tool), answers(real[tool])))
        balance, spend_cap = real["get_account_balance"], real["get_spend_cap"]
        nested = UpstreamAnswer(200, '{"ok": true, "balance": ' + "[" * 100_000 + "]" * 100_000 + "}")
        gzip_labelled = UpstreamAnswer(200, json.dumps(balance), headers={"content-encoding": "gzip"})
        naive_time = UpstreamAnswer(200, json.dumps({**spend_cap, "reset_at": spend_cap["reset_at"].rstrip("Z")}))
        bool_number = UpstreamAnswer(200, json.dumps({**balance, "balance": True}))
        nan_number = UpstreamAnswer(200, json.dumps({**balance, "balance": float("nan")}))
        redirect = UpstreamAnswer(302, "", headers={"location": "https://elsewhere.example.net/steal"})
        unreadable_redirect = UpstreamAnswer(301, "", headers={"location": "http://[::1"})
        far_future_clock = UpstreamAnswer(200, json.dumps(balance), headers={"date": "Fri, 31 Dec 9999 23:59:59 -1200"})
        beyond_float = UpstreamAnswer(200, json.dumps({**balance, "balance": 2**1024}))
        zero_cap = UpstreamAnswer(200, json.dumps({**real["check_spend_alerts"], "daily_cap": 0}))

        @settings(PROPERTY_SETTINGS, max_examples=200)
        @given(exchange=exchanges)
        @example(exchange=("get_account_balance", nested))
        @example(exchange=("get_account_balance", gzip_labelled))
        @example(exchange=("get_spend_cap", naive_time))
        @example(exchange=("get_account_balance", bool_number))
        @example(exchange=("check_spend_alerts", nan_number))
        @example(exchange=("get_account_usage", redirect))
        @example(exchange=("get_account_usage", unreadable_redirect))
        @example(exchange=("get_account_balance", far_future_clock))
        @example(exchange=("get_account_balance", beyond_float))
        @example(exchange=("check_spend_alerts", zero_cap))
        def any_answer(exchange: tuple[str, UpstreamAnswer]) -> None:
            tool, answer = exchange
            serve(sandbox, answer)
            try:
                result = server.call(tool, {})
            finally:
                sandbox.control.clear_fault()
            assert_typed_or_specific(server, tool, result, answer.texts(), UPSTREAM_ECHO_LIMIT, seen)
            if not result.is_error and tool in ("get_account_balance", "get_spend_cap"):
                assert_numbers_unchanged(json.loads(answer.body), result.structured_content or {})
            server.assert_still_serving(sandbox)

        any_answer()
        server.assert_still_serving(sandbox)
    seen.assert_varied()


def add_one_rule_of_each_kind(server: StdioServer, sandbox: RunningSandbox) -> None:
    """So check_spend_alerts evaluates every kind of rule against what upstream sends."""
    thresholds = {
        "balance_below": sandbox.control.account(ACCOUNT)["balance"] + 1,
        "daily_spend_above": 1,
        "daily_cap_used_pct_above": 50,
        "runway_below_hours": 24,
    }
    for kind, threshold in thresholds.items():
        result = server.call("set_spend_alert", {"kind": kind, "threshold": threshold})
        assert not result.is_error, error_text(result)


def assert_numbers_unchanged(served: dict[str, Any], shown: dict[str, Any]) -> None:
    """The numbers a typed result reports are the service's, with their JSON type: never coerced from bool or text."""
    for name in ("balance", "total_purchased", "daily_cap", "daily_spent", "remaining"):
        if name in served and name in shown:
            assert type(shown[name]) is type(served[name]) and shown[name] == served[name], (name, served, shown)
