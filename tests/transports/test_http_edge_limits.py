"""Issue 8's edges through real clients: bounded arguments and rule counts, HTTP under abuse, protocol
conformance over stdio, and alert checks that survive a broken state file."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import LoggingMessageNotificationParams

from tensorfeed_mcp.core.alerts import make_rule
from tensorfeed_mcp.errors import shown
from tensorfeed_mcp.limits import MAX_NAME_LENGTH, MAX_SAVED_RULES, MAX_UPSTREAM_TEXT
from tensorfeed_mcp.models import is_unsafe_char
from tensorfeed_mcp.runtime.local import LocalRuntime
from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tensorfeed_mcp.settings.environment import Settings
from tensorfeed_mcp.settings.identity import token_fingerprint
from tensorfeed_mcp.store.sqlite import SqliteStore
from tensorfeed_mcp.surface.subscriptions import SUMMARY_URI
from tensorfeed_mcp.transports.listener import HEADER_TIMEOUT_SECONDS, MAX_CONNECTIONS
from tensorfeed_mcp.transports.local_http import build_http_app
from tests.support.answers import timestamps_in
from tests.support.clients import INITIALIZE, MCP_HEADERS, Caller
from tests.support.env import clean_env, settings_for
from tests.support.records import read_recorded, record
from tests.support.servers import console_script, serving, stdio_params
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),  # 2025-era features on purpose
]

FOREIGN_WORDS = ("validation error", "Arguments", "pydantic", "https://errors")
SHORT_MESSAGE = 500
MEGABYTE = 1024 * 1024
MARGIN_SECONDS = 5.0
ANSWER_SECONDS = 20.0
HIDDEN_CHARACTERS = "\U000e0041\u200b\u2028"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@asynccontextmanager
async def stdio_client_of(
    settings: Settings, tmp_path: Path, extra_env: dict[str, str] | None = None, **options: Any
) -> AsyncIterator[Client]:
    """A legacy-era Client of the console script over stdio; its stderr is recorded when it ends."""
    stderr = tmp_path / "stderr.log"
    try:
        with stderr.open("w") as errlog:
            params = stdio_params(settings, **(extra_env or {}))
            async with Client(stdio_client(params, errlog=errlog), mode="legacy", **options) as client:
                yield client
    finally:
        read_recorded(stderr)


def assert_in_our_words(message: str) -> None:
    for word in FOREIGN_WORDS:
        assert word not in message, message


# ---- 1. Arguments ----------------------------------------------------------------------------------------------


async def test_unknown_and_missing_arguments_are_named_and_nothing_is_sent(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A misspelt argument is refused with the accepted ones listed, before any upstream request; a missing one
    is named; neither message speaks pydantic."""
    async with stdio_client_of(settings_for(sandbox, tmp_path), tmp_path) as client:
        caller = Caller(client)
        before = sandbox.control.upstream_requests()
        unknown = await caller.error("get_account_usage", endpoit="x")
        assert sandbox.control.upstream_requests() == before
        assert "endpoit" in unknown and "accepts: endpoint" in unknown
        missing = await caller.error("delete_spend_alert")
        assert "'name'" in missing
        missing_cap = await caller.error("set_spend_cap")
        assert "'daily_cap'" in missing_cap
        wrong_type = await caller.error("set_spend_cap", daily_cap="abc")
        assert "daily_cap" in wrong_type and "clear_spend_cap" in wrong_type
    for message in (unknown, missing, missing_cap, wrong_type):
        assert_in_our_words(message)


async def test_oversized_strings_are_refused_briefly_and_the_server_still_answers(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A 1 MB endpoint filter, and names or kinds over 64 characters, are refused in a short message that says the
    limit; a name of exactly 64 characters is still accepted."""
    huge = "x" * MEGABYTE
    over_name = "n" * (MAX_NAME_LENGTH + 1)
    async with stdio_client_of(settings_for(sandbox, tmp_path), tmp_path) as client:
        caller = Caller(client)
        refusals = {
            "endpoint": await caller.error("get_account_usage", endpoint=huge),
            "name": await caller.error("set_spend_alert", kind="balance_below", threshold=10, name=over_name),
            "huge name": await caller.error("set_spend_alert", kind="balance_below", threshold=10, name=huge),
            "delete name": await caller.error("delete_spend_alert", name=over_name),
            "kind": await caller.error("set_spend_alert", kind="k" * (MAX_NAME_LENGTH + 1), threshold=10),
            "huge kind": await caller.error("set_spend_alert", kind=huge, threshold=10),
        }
        longest_name = "n" * MAX_NAME_LENGTH
        saved = await caller.ok("set_spend_alert", kind="balance_below", threshold=10, name=longest_name)
        balance = await caller.ok("get_account_balance")
    assert saved["rule"]["name"] == longest_name
    assert balance["balance"] == sandbox.control.account("busy")["balance"]
    for message in refusals.values():
        assert (
            len(message) < SHORT_MESSAGE
            and "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in message
        )
        assert_in_our_words(message)
    assert str(MAX_UPSTREAM_TEXT) in refusals["endpoint"]
    for key in ("name", "huge name", "delete name"):
        assert str(MAX_NAME_LENGTH) in refusals[key], refusals[key]
    for key in ("kind", "huge kind"):
        assert "balance_below" in refusals[key] and "runway_below_hours" in refusals[key], refusals[key]


async def test_at_most_100_saved_rules_and_answers_carry_one_rule_and_a_count(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Saving reports the rule and the running count, the 101st new rule is refused naming the limit, an existing
    rule can still be updated at the limit, and a delete reports the rule and the count left."""
    async with stdio_client_of(settings_for(sandbox, tmp_path), tmp_path) as client:
        caller = Caller(client)
        counts = []
        for i in range(MAX_SAVED_RULES):
            saved = await caller.ok("set_spend_alert", kind="balance_below", threshold=i + 1, name=f"rule-{i:03}")
            assert set(saved) == {"rule", "action", "rule_count"}
            assert (saved["rule"]["name"], saved["action"]) == (f"rule-{i:03}", "created")
            counts.append(saved["rule_count"])
        refused = await caller.error("set_spend_alert", kind="balance_below", threshold=1, name="one-too-many")
        updated = await caller.ok("set_spend_alert", kind="balance_below", threshold=7, name="rule-000")
        deleted = await caller.ok("delete_spend_alert", name="rule-042")
        check = await caller.ok("check_spend_alerts")
    assert counts == list(range(1, MAX_SAVED_RULES + 1))
    assert f"({MAX_SAVED_RULES})" in refused and len(refused) < SHORT_MESSAGE
    assert (updated["action"], updated["rule"]["threshold"], updated["rule_count"]) == ("updated", 7.0, 100)
    assert set(deleted) == {"deleted", "rule_count"}
    assert (deleted["deleted"]["name"], deleted["rule_count"]) == ("rule-042", MAX_SAVED_RULES - 1)
    names = [alert["name"] for alert in check["alerts"]]
    assert len(names) == MAX_SAVED_RULES - 1 and "one-too-many" not in names and "rule-042" not in names


# ---- 2. HTTP under abuse ---------------------------------------------------------------------------------------


def open_slow_connections(port: int, count: int) -> list[socket.socket]:
    """Connections that send half a request line and headers, then nothing more (slowloris)."""
    slow = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        slow.append(connection)
    return slow


def more_of(connection: socket.socket) -> bytes:
    chunk = connection.recv(4096)
    assert chunk, "the server closed the connection before answering"
    return chunk


def answered_then_slow(port: int) -> socket.socket:
    """A keep-alive connection that gets one whole answer, then sends half of its next request's headers."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.sendall(b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        received += more_of(connection)
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    assert length is not None
    while len(body) < int(length.group(1)):
        body += more_of(connection)
    record(head + body)
    connection.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return connection


def closed_by_server(connection: socket.socket, deadline: float) -> bool:
    """Whether the server closes `connection` before the monotonic `deadline`."""
    connection.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return connection.recv(1024) == b""
    except ConnectionResetError:
        return True  # closed with our unread bytes still queued: a reset rather than an orderly end
    except TimeoutError:
        return False


async def test_slow_header_connections_give_way_to_a_real_client_and_are_all_closed(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Three times MAX_CONNECTIONS slowloris sockets (one of them after a first answer): each new connection at the
    cap takes the place of the one waiting longest for its headers, so a real client is served at its first try
    without waiting for them to time out; every slow one is closed within the header deadline, and the server logs
    a line about it, not thousands."""
    with serving(settings_for(sandbox, tmp_path)) as served:
        opened = time.monotonic()
        slow = [answered_then_slow(served.port), *open_slow_connections(served.port, 3 * MAX_CONNECTIONS)]
        try:
            with anyio.fail_after(HEADER_TIMEOUT_SECONDS / 2):  # a bound: it must not wait out the slow ones
                async with Client(streamable_http_client(served.url), mode="legacy") as client:
                    balance = (await Caller(client).ok("get_account_balance"))["balance"]
            deadline = opened + HEADER_TIMEOUT_SECONDS + MARGIN_SECONDS
            still_open = [i for i, connection in enumerate(slow) if not closed_by_server(connection, deadline)]
        finally:
            for connection in slow:
                connection.close()
    assert balance == sandbox.control.account("busy")["balance"]
    assert still_open == []
    output = served.output()
    assert output.count(f"At {MAX_CONNECTIONS} connections") == 1
    assert len(output.splitlines()) < 40, output


@contextmanager
def http_app_in_thread(runtime: LocalRuntime) -> Iterator[str]:
    """Serve build_http_app's streamable-HTTP app with uvicorn in a thread; yields its MCP URL."""
    app = build_http_app(runtime.server(), "streamable-http", "127.0.0.1", runtime.settings)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def test_legacy_subscriptions_are_released_when_their_session_closes(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Each legacy session that subscribed is counted until its HTTP session ends, then forgotten."""
    runtime = LocalRuntime(settings_for(sandbox, tmp_path))
    with http_app_in_thread(runtime) as url:
        async with AsyncExitStack() as both:
            for _ in range(2):
                client = await both.enter_async_context(Client(url, mode="legacy"))
                await client.subscribe_resource(SUMMARY_URI)
            assert runtime.subscriptions.legacy_subscriber_count() == 2
            async with Client(url, mode="legacy") as third:
                await third.subscribe_resource(SUMMARY_URI)
                assert runtime.subscriptions.legacy_subscriber_count() == 3
            await eventually(lambda: runtime.subscriptions.legacy_subscriber_count() == 2, within=MARGIN_SECONDS)
        await eventually(lambda: runtime.subscriptions.legacy_subscriber_count() == 0, within=MARGIN_SECONDS)


async def test_a_session_beyond_the_limit_is_refused_and_the_open_ones_keep_working(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """With TENSORFEED_MCP_MAX_SESSIONS=2 a third session gets a 503 saying why; the two still serve, and once
    one ends a new session opens."""
    expected = sandbox.control.account("busy")["balance"]
    with serving(settings_for(sandbox, tmp_path), env={"TENSORFEED_MCP_MAX_SESSIONS": "2"}) as served:
        async with httpx2.AsyncClient(timeout=10) as http:

            async def try_to_open() -> httpx2.Response:
                response = await http.post(served.url, json=INITIALIZE, headers=MCP_HEADERS)
                record(response.text)
                return response

            async with AsyncExitStack() as stack:
                first = Caller(await stack.enter_async_context(Client(served.url, mode="legacy")))
                async with Client(served.url, mode="legacy") as second_client:
                    refused = await try_to_open()
                    assert refused.status_code == 503
                    assert "Too many open sessions" in refused.json()["error"]["message"]
                    assert (await first.ok("get_account_balance"))["balance"] == expected
                    assert (await Caller(second_client).ok("get_account_balance"))["balance"] == expected
                admitted = await try_to_open()
    assert admitted.status_code == 200 and '"serverInfo"' in admitted.text


# ---- 3. Protocol -----------------------------------------------------------------------------------------------


async def test_logging_is_declared_and_set_level_filters_warnings(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """The server declares logging and honours logging/setLevel: a triggered alert's warning reaches the client at
    the default level and at 'warning', but not after setLevel('error')."""
    received: list[str] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        record(params.data)
        received.append(f"{params.level} {params.data}")

    balance = fresh_sandbox.control.account("busy")["balance"]
    async with stdio_client_of(settings_for(fresh_sandbox, tmp_path), tmp_path, logging_callback=on_log) as client:
        assert client.server_capabilities.logging is not None
        caller = Caller(client)

        async def trigger(margin: int) -> str:
            """Check a rule that triggers with a message of its own; return the warning it would send."""
            await caller.ok("set_spend_alert", kind="balance_below", threshold=balance + margin, name="floor")
            check = await caller.ok("check_spend_alerts")
            assert check["triggered"] == 1
            return f"warning Alert floor triggered: {check['alerts'][0]['message']}"

        heard = await trigger(1)
        await eventually(lambda: heard in received, within=ANSWER_SECONDS)
        await client.set_logging_level("error")
        filtered = await trigger(2)
        await client.set_logging_level("warning")
        heard_again = await trigger(3)
        # Notifications are handled in the order they arrive, so the filtered one would be in before this one.
        await eventually(lambda: heard_again in received, within=ANSWER_SECONDS)
    assert received == [heard, heard_again] and filtered not in received


def _pump(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for line in stream:
        lines.put(line)


@contextmanager
def raw_stdio_server(settings: Settings, tmp_path: Path) -> Iterator[tuple[Callable[[bytes], None], Callable[[], Any]]]:
    """The console script over stdio, spoken to in raw lines: yields `send(line)` and `answer()` (the next JSON line
    it writes, within ANSWER_SECONDS). Everything it wrote is recorded."""
    stderr = tmp_path / "raw-stderr.log"
    with stderr.open("w") as errlog:
        process = subprocess.Popen(
            [console_script()], env=clean_env(settings), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog
        )
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(stdout, lines), daemon=True)
    reader.start()

    def send(line: bytes) -> None:
        stdin.write(line)
        stdin.flush()

    def answer() -> Any:
        line = lines.get(timeout=ANSWER_SECONDS)
        record(line.decode(errors="replace"))
        return json.loads(line)

    try:
        yield send, answer
    finally:
        stdin.close()  # the server exits at the end of its input
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        reader.join(10)
        read_recorded(stderr)


def test_malformed_stdio_lines_get_json_rpc_errors_and_the_server_goes_on(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A line that is not JSON gets -32700, JSON that is no request gets -32600 (both with id null), and the same
    process then answers initialize."""
    with raw_stdio_server(settings_for(sandbox, tmp_path), tmp_path) as (send, answer):
        errors = []
        for line in (b"{not json\n", b"[1,2]\n", b"{}\n"):
            send(line)
            errors.append(answer())
        send(json.dumps(INITIALIZE).encode() + b"\n")
        initialized = answer()
    assert [(error["id"], error["error"]["code"]) for error in errors] == [
        (None, -32700),
        (None, -32600),
        (None, -32600),
    ]
    assert all(error["jsonrpc"] == "2.0" and error["error"]["message"] for error in errors)
    assert initialized["id"] == INITIALIZE["id"] and initialized["result"]["serverInfo"]["name"] == "tensorfeed"


def test_a_request_whose_params_are_not_an_object_gets_an_error_with_its_id_over_stdio(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """params as an array or a string: -32602 answering that request's id (a client waits for that id), and the
    same process goes on serving."""
    with raw_stdio_server(settings_for(sandbox, tmp_path), tmp_path) as (send, answer):
        send(json.dumps(INITIALIZE).encode() + b"\n")
        assert answer()["id"] == INITIALIZE["id"]
        send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        errors = []
        for request_id, params in ((7, [1, 2]), ("eight", "text"), (9, [])):
            request = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": params}
            send(json.dumps(request).encode() + b"\n")
            errors.append(answer())
        send(b'{"jsonrpc": "2.0", "id": 10, "method": "tools/list"}\n')
        listed = answer()
    assert [(error["id"], error["error"]["code"]) for error in errors] == [(7, -32602), ("eight", -32602), (9, -32602)]
    assert all("params must be a JSON object" in error["error"]["message"] for error in errors)
    assert listed["id"] == 10 and "get_account_balance" in {tool["name"] for tool in listed["result"]["tools"]}


async def test_reading_an_unknown_resource_with_a_huge_uri_echoes_only_its_start(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A 100,000-character URI: invalid params, a short message with the URI's start and what can be read, nothing
    of its tail in the error's data or the server's log."""
    tail = "q" * 100_000
    async with stdio_client_of(settings_for(sandbox, tmp_path), tmp_path) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource(f"tensorfeed://account/{tail}")
        summary = await client.read_resource(SUMMARY_URI)  # and the server goes on
    error = refused.value.error
    record(error.model_dump_json())
    assert error.code == -32602 and len(error.model_dump_json()) < SHORT_MESSAGE, error.message[:SHORT_MESSAGE]
    assert error.message.startswith("Unknown resource 'tensorfeed://account/qqq") and SUMMARY_URI in error.message
    assert "q" * 100 not in read_recorded(tmp_path / "stderr.log")
    assert summary.contents


async def test_a_prompt_with_an_unknown_argument_or_name_is_invalid_params_without_a_traceback(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """spend_review takes no argument: one given is named, with what is accepted; an unknown prompt likewise."""
    async with stdio_client_of(settings_for(sandbox, tmp_path), tmp_path) as client:
        refusals = []
        for name, arguments in (("spend_review", {"period": "week"}), ("spend_reveiw" + "w" * 1000, None)):
            with pytest.raises(MCPError) as refused:
                await client.get_prompt(name, arguments)
            record(refused.value.error.model_dump_json())
            refusals.append(refused.value.error)
        review = await client.get_prompt("spend_review")
    assert [(error.code, error.message) for error in refusals] == [
        (-32602, "spend_review does not take 'period'. It accepts: no arguments."),
        (-32602, f"Unknown prompt {shown('spend_reveiw' + 'w' * 1000)}; prompts: spend_review."),
    ]
    assert "get_spend_cap" in getattr(review.messages[0].content, "text", "")
    assert "Traceback" not in read_recorded(tmp_path / "stderr.log")


async def test_the_summary_resource_is_compact_utf8_json_shaped_like_the_tools(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """The summary resource is compact JSON with 'Z' timestamps, non-ASCII as UTF-8, and the usd_estimate and
    endpoint rows the tools return."""
    accepted = fresh_sandbox.control.add_calls("new", "/api/premium/café", 10, count=3)
    assert accepted == 3
    async with stdio_client_of(settings_for(fresh_sandbox, tmp_path, account="new"), tmp_path) as client:
        caller = Caller(client)
        contents = (await client.read_resource(SUMMARY_URI)).contents
        balance = await caller.ok("get_account_balance")
        usage = await caller.ok("get_account_usage")
    text: str = getattr(contents[0], "text", "")
    record(text)
    summary = json.loads(text)
    assert text == json.dumps(summary, separators=(",", ":"), ensure_ascii=False)
    assert "\\u" not in text and "café" in text
    stamps = timestamps_in(summary)
    assert stamps and all(TIMESTAMP.fullmatch(stamp) for stamp in stamps), stamps
    account = fresh_sandbox.control.account("new")
    assert summary["balance"] == account["balance"] == balance["balance"]
    assert summary["usd_estimate"] == balance["usd_estimate"]
    assert summary["top_endpoints"] == usage["by_endpoint"][:3]
    assert summary["top_endpoints"][0]["endpoint"] == "/api/premium/café"


async def test_hidden_characters_are_cleaned_from_upstream_endpoint_names(
    fresh_sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """An endpoint name with a tag character, a zero-width space and a line separator comes back without them."""
    sent = f"/api/premium/{HIDDEN_CHARACTERS[0]}tagged{HIDDEN_CHARACTERS[1]}zero{HIDDEN_CHARACTERS[2]}width"
    assert fresh_sandbox.control.add_calls("new", sent, 5, count=2) == 2
    stored = fresh_sandbox.control.account("new")["calls"][0]["endpoint"]
    assert stored == sent  # the sandbox serves them as they are
    async with stdio_client_of(settings_for(fresh_sandbox, tmp_path, account="new"), tmp_path) as client:
        result = await Caller(client).raw("get_account_usage")
    assert not result.is_error and result.structured_content is not None
    cleaned = "".join(char for char in stored if not is_unsafe_char(char))
    assert [row["endpoint"] for row in result.structured_content["by_endpoint"]] == [cleaned]
    assert all(call["endpoint"] == cleaned for call in result.structured_content["recent"])
    everything = result.model_dump_json() + json.dumps(result.structured_content, ensure_ascii=False)
    assert not any(char in everything for char in HIDDEN_CHARACTERS)
    assert "\\u200b" not in everything.lower() and "\\u2028" not in everything.lower()


# ---- 4. The state file -----------------------------------------------------------------------------------------


def writes_are_refused(path: Path) -> bool:
    """Whether this process really cannot write `path` (root ignores file modes)."""
    try:
        os.close(os.open(path, os.O_WRONLY))
    except PermissionError:
        return True
    return False


async def break_state(state_dir: Path, problem: str) -> Path:
    """Make the state file unusable in the way `problem` names; return the path whose bytes must survive."""
    state = state_dir / "alerts.sqlite3"
    state_dir.mkdir()
    if problem == "corrupt":
        state.write_bytes(b"not a database: the user's file all the same\n" * 64 + bytes(range(256)))
        return state
    saved = make_rule("balance_below", 1, "saved-by-user")
    await SqliteStore(state).save_rule(token_fingerprint(DEMO_TOKENS["busy"]), saved)
    state.chmod(0o400)
    state_dir.chmod(0o500)
    if writes_are_refused(state):
        return state
    # Root ignores modes, so the one write the server cannot do: a folder where the file should be.
    state_dir.chmod(0o700)
    for path in state_dir.iterdir():
        path.unlink()
    state.mkdir()
    (state / "keep").write_bytes(b"kept")
    return state / "keep"


@pytest.mark.parametrize("problem", ["corrupt", "read_only"])
async def test_env_rules_are_checked_when_the_state_file_is_broken(
    sandbox: RunningSandbox, tmp_path: Path, problem: str
) -> None:
    """With the state file corrupt or unwritable, check_spend_alerts still evaluates the environment's rules, says
    what is wrong with the file in state_error, and leaves the file's bytes as they were."""
    state_dir = tmp_path / "state"
    kept = await break_state(state_dir, problem)
    before = kept.read_bytes()
    balance = sandbox.control.account("busy")["balance"]
    rules_env = {"TENSORFEED_ALERT_BALANCE_BELOW": str(balance + 1), "TENSORFEED_ALERT_DAILY_SPEND_ABOVE": "100000"}
    try:
        async with stdio_client_of(settings_for(sandbox, state_dir), tmp_path, rules_env) as client:
            check = await Caller(client).ok("check_spend_alerts")
    finally:
        state_dir.chmod(0o700)
    verdicts = {alert["name"]: (alert["status"], alert["observed"]) for alert in check["alerts"]}
    assert verdicts.pop("saved-by-user", None) in (None, ("ok", float(balance)))  # a read-only file can be read
    assert verdicts == {
        "env:balance_below": ("triggered", float(balance)),
        "env:daily_spend_above": ("ok", float(check["daily_spent"])),
    }
    assert check["triggered"] == 1 and check["balance"] == balance
    assert check["state_error"] and str(state_dir / "alerts.sqlite3") in check["state_error"]
    assert kept.read_bytes() == before
