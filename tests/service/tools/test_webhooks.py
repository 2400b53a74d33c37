"""Alert transitions posted to a webhook (issue 12), through the installed console script and a stdio server.

A receiver in the test (a stdlib HTTP server on loopback) records every POST and answers with statuses the
test queues. Each transition is posted once across a watcher and concurrent `check` runs; the json, slack and
discord bodies carry the sandbox's values; 5xx and connection failures are retried and stay queued, a 4xx is
reported once and dropped; a remote http:// URL is refused at load; and neither the URL's path nor the token
appears in anything a process printed or returned.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import stdio_client

from tensorfeed_mcp.limits import MAX_QUEUED_MESSAGES
from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox, SandboxControl, sandbox_token
from tensorfeed_mcp.settings.identity import mask_token
from tests.support.cli import EXIT_CANNOT_RUN, EXIT_OK, EXIT_TRIGGERED, run
from tests.support.clients import Caller, tenant_client
from tests.support.env import replica_env, server_env, settings_for
from tests.support.records import WATCHED_TOKENS, masked, read_recorded, record
from tests.support.servers import console_script, running_replicas, stdio_params

HOOK_KEY = secrets.token_hex(12)
"""The secret part of every webhook URL here, as a Slack URL's last segment is its key."""
HOOK_PATH = f"/hooks/T000/B000/{HOOK_KEY}"
TOKEN = DEMO_TOKENS["busy"]
TENANTS = {name: sandbox_token(name) for name in ("hook-a", "hook-b")}
WATCHED_TOKENS.extend(TENANTS.values())
RULE = "env:balance_below"
URL_VARIABLE, FORMAT_VARIABLE = "TENSORFEED_ALERT_WEBHOOK_URL", "TENSORFEED_ALERT_WEBHOOK_FORMAT"
ARRIVAL_SECONDS = 20.0
BACKOFF_BOUND_SECONDS = 2.5  # three attempts' backoff is "under ~2 s in all", plus loopback round trips
PAYMENT_PATHS = ("/api/payment/balance", "/api/payment/usage", "/api/payment/spend-cap")
ANSWER_CHUNK_BYTES = 64 * 1024
HUGE_ANSWER_BYTES = 256 * 1024 * 1024
MEMORY_ALLOWANCE_MB = 32
START_ALLOWANCE_SECONDS = 4.0  # for a command's start and its reads, on a loaded machine
TRIGGER_DELIVERED = {"rule": RULE, "event": "triggered", "outcome": "delivered"}


@dataclass(frozen=True)
class Post:
    """One POST the receiver got, the status it answered and how much of its answer's body it could send."""

    path: str
    headers: dict[str, str]
    body: Any
    answered: int
    at: float
    answer_bytes: int


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver = cast(Receiver, self.server)
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode(errors="replace")
        record(raw)
        try:
            body: Any = json.loads(raw)
        except json.JSONDecodeError:
            body = raw
        status = receiver.next_status()
        receiver.wait_until_released()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(receiver.answer_size))
        self.end_headers()
        sent = self._send_answer(receiver.answer_size)
        headers = {name.lower(): value for name, value in self.headers.items()}
        receiver.add(Post(self.path, headers, body, status, time.monotonic(), sent))

    def _send_answer(self, size: int) -> int:
        """Send `size` bytes of answer ("okok…"), until the sender hangs up; how many bytes went."""
        chunk = b"ok" * (ANSWER_CHUNK_BYTES // 2)
        sent = 0
        try:
            while sent < size:
                part = chunk[: size - sent]
                self.wfile.write(part)
                sent += len(part)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return sent

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read what arrived from the receiver itself."""


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that answers each POST with the next queued status (200 when none) and a body
    of `answer_size` bytes; while held, it answers nothing until released."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self._posts: list[Post] = []
        self._statuses: deque[int] = deque()
        self._arrived = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        self.answer_size = 2

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}{HOOK_PATH}"

    def answer_with(self, *statuses: int) -> None:
        with self._arrived:
            self._statuses.extend(statuses)

    def next_status(self) -> int:
        with self._arrived:
            return self._statuses.popleft() if self._statuses else 200

    def hold(self) -> None:
        """Answer nothing until `release`: a receiver that hangs."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def wait_until_released(self) -> None:
        self._released.wait()

    def add(self, post: Post) -> None:
        with self._arrived:
            self._posts.append(post)
            self._arrived.notify_all()

    def posts(self) -> list[Post]:
        with self._arrived:
            return list(self._posts)

    def wait_for(self, count: int) -> list[Post]:
        """The posts so far, once at least `count` have arrived (failing after ARRIVAL_SECONDS)."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self._posts) >= count, ARRIVAL_SECONDS)
            assert arrived, f"{len(self._posts)} posts arrived within {ARRIVAL_SECONDS} s, expected {count}"
            return list(self._posts)


@contextmanager
def receiving(port: int = 0) -> Iterator[Receiver]:
    """Serve a Receiver in a background thread until the block ends."""
    receiver = Receiver(port)
    thread = threading.Thread(target=receiver.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()  # a held answer must not outlive the test
        receiver.shutdown()
        receiver.server_close()
        thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as running:
        yield running


def closed_port() -> int:
    """A loopback port nothing listens on: bound once, never listened on, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_hidden(*texts: str) -> None:
    """Neither the webhook URL's path nor the token (beyond its masked form) is in any of `texts`."""
    for text in texts:
        assert HOOK_KEY not in text and "/hooks/T000" not in text, f"the webhook path leaked: {text[:400]}"
        assert TOKEN[12:-4] not in text, "the token leaked"


def balance_of(sandbox: RunningSandbox) -> int:
    return int(sandbox.control.account("busy")["balance"])


def alert_vars(sandbox: RunningSandbox, webhook_url: str | None, threshold: int | None = None) -> dict[str, str]:
    """The env rule balance_below (by default just above busy's balance, so triggered) and the webhook URL."""
    below = balance_of(sandbox) + 1 if threshold is None else threshold
    rule = {"TENSORFEED_ALERT_BALANCE_BELOW": str(below)}
    return rule | ({URL_VARIABLE: webhook_url} if webhook_url else {})


def check_env(sandbox: RunningSandbox, state_dir: Path, **variables: str) -> dict[str, str]:
    """The environment of a `check` of busy on `sandbox`, with state in `state_dir`, plus `variables`."""
    return server_env(settings_for(sandbox, state_dir)) | variables


@dataclass(frozen=True)
class Checked:
    """What one `tensorfeed-mcp check --json` exited with and printed."""

    code: int
    result: dict[str, Any]

    @property
    def notifications(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.result["notifications"])

    @property
    def delivery(self) -> dict[str, Any] | None:
        return cast(dict[str, Any] | None, self.notifications["last_delivery"])

    @property
    def verdict(self) -> dict[str, Any]:
        return cast(dict[str, Any], next(alert for alert in self.result["alerts"] if alert["name"] == RULE))


def check(env: dict[str, str], *args: str) -> Checked:
    """Run `check --json` once; it must have checked (exit 0 or 1) and shown no secret."""
    done = run("check", "--json", *args, env=env)
    assert_hidden(done.stdout, done.stderr)
    assert done.returncode in (EXIT_OK, EXIT_TRIGGERED), done.stderr
    return Checked(done.returncode, json.loads(done.stdout))


def checks_at_once(env: dict[str, str], count: int) -> list[Checked]:
    """Start `count` checks together and wait for all of them."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: check(env), range(count)))


def assert_delivery(checked: Checked, event: str, outcome: str) -> dict[str, Any]:
    """The check's last delivery was `event` of RULE with `outcome`; returns it."""
    delivery = checked.delivery
    assert delivery is not None, checked.notifications
    assert (delivery["rule"], delivery["event"], delivery["outcome"]) == (RULE, event, outcome), delivery
    return delivery


def assert_destination(destination: str, url: str) -> None:
    """`destination` names the URL's scheme, host and port, written as in the URL, and nothing of its path."""
    parts = urlsplit(url)
    assert destination == f"{parts.scheme}://{parts.netloc}/…", destination
    assert_hidden(destination)


async def served_evaluations(control: SandboxControl, count: int) -> None:
    """Wait until the sandbox has answered `count` evaluations' reads (balance, usage and cap each)."""
    with anyio.fail_after(ARRIVAL_SECONDS):
        while True:
            by_path = control.stats()["by_path"]
            if all(by_path.get(path, 0) >= count for path in PAYMENT_PATHS):
                return
            await anyio.sleep(0.05)


def events(posts: list[Post]) -> list[tuple[str, str]]:
    return [(post.body["event"], post.body["alert"]["name"]) for post in posts]


@pytest.mark.anyio
async def test_each_transition_is_posted_once_across_a_watcher_and_two_concurrent_checks(
    fresh_sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Issue 12 item 2: the stored status decides who sends, so a watcher and two cron checks post once."""
    control = fresh_sandbox.control
    state = tmp_path / "state"
    variables = alert_vars(fresh_sandbox, receiver.url)
    env = check_env(fresh_sandbox, state, **variables)
    params = stdio_params(settings_for(fresh_sandbox, state), **variables, TENSORFEED_ALERT_POLL_SECONDS="30")
    control.reset_stats()
    server_log = tmp_path / "server.log"
    with server_log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            concurrent = await anyio.to_thread.run_sync(checks_at_once, env, 2)
            assert [checked.code for checked in concurrent] == [EXIT_TRIGGERED, EXIT_TRIGGERED]
            assert sum(checked.delivery is not None for checked in concurrent) <= 1
            await served_evaluations(control, 3)  # the watcher's first evaluation, and both checks'
            first = await anyio.to_thread.run_sync(receiver.wait_for, 1)
            assert events(first) == [("triggered", RULE)]

            control.add_purchase("busy", credits=550, amount_usd=10.0)
            resolving, settled = check(env), check(env)
            assert (resolving.code, settled.code) == (EXIT_OK, EXIT_OK)
            assert_delivery(resolving, "resolved", "delivered")
            assert (settled.delivery, settled.notifications["pending"]) == (None, 0)

            from_tool = (await Caller(client).ok("check_spend_alerts"))["notifications"]
            assert (from_tool["configured"], from_tool["format"], from_tool["pending"]) == (True, "json", 0)
            # The server posts only what its own checks left queued: here perhaps the trigger, never the resolution.
            assert from_tool["last_delivery"] in (None, {**from_tool["last_delivery"], **TRIGGER_DELIVERED})
            assert_destination(from_tool["destination"], receiver.url)
    assert_hidden(read_recorded(server_log))
    assert events(receiver.posts()) == [("triggered", RULE), ("resolved", RULE)]


def assert_summary(summary: str, verdict: dict[str, Any], event: str) -> None:
    """A slack/discord summary line names the event and rule, the observed value, threshold and since time."""
    assert summary.startswith(f"TensorFeed alert {event}: {verdict['name']}"), summary
    for value in (verdict["observed"], verdict["threshold"]):
        shown = [f"{value:g}", f"{value:,.0f}", f"{value:,}"]
        assert any(re.search(rf"(?<![\d,.]){re.escape(form)}(?![\d,])", summary) for form in shown), (value, summary)
    if event == "triggered":
        since = datetime.fromisoformat(verdict["since"].replace("Z", "+00:00")).astimezone(UTC)
        assert since.strftime("%H:%M") in summary, summary
    assert_hidden(summary)


@pytest.mark.parametrize("body_format", ["json", "slack", "discord"])
def test_each_format_carries_the_alert_and_the_account(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path, body_format: str
) -> None:
    """Issue 12 item 1: one POST of application/json in the chosen format, with the sandbox's values."""
    balance = balance_of(sandbox)
    variables = alert_vars(sandbox, receiver.url) | {FORMAT_VARIABLE: body_format}
    checked = check(check_env(sandbox, tmp_path, **variables))
    assert checked.code == EXIT_TRIGGERED
    assert_delivery(checked, "triggered", "delivered")
    assert checked.notifications["format"] == body_format
    [post] = receiver.posts()
    assert post.path == HOOK_PATH
    assert post.headers["content-type"].split(";")[0].strip() == "application/json"
    assert "authorization" not in post.headers  # the API's bearer token is for the API alone
    assert_hidden(json.dumps(post.headers))
    verdict = checked.verdict
    assert (verdict["observed"], verdict["threshold"], verdict["status"]) == (balance, balance + 1, "triggered")
    body = post.body
    if body_format == "json":
        assert body["event"] == "triggered" and body["alert"] == verdict
        account = {key: checked.result[key] for key in ("balance", "daily_spent", "runway_hours")}
        assert {key: body[key] for key in account} == account and body["balance"] == balance
        assert body["token"] == mask_token(TOKEN)
        assert body["at"].endswith("Z")
        assert datetime.fromisoformat(body["at"].replace("Z", "+00:00")).utcoffset() == timedelta(0)
    elif body_format == "slack":
        assert_summary(body["text"], verdict, "triggered")
        blocks = body["blocks"]
        assert blocks and all(isinstance(block, dict) and isinstance(block.get("type"), str) for block in blocks)
        assert_hidden(json.dumps(blocks))
    else:
        assert_summary(body["content"], verdict, "triggered")


async def reported_after_sending(caller: Caller) -> dict[str, Any]:
    """check_spend_alerts's answer once the server's background sender has reported a delivery and left nothing
    queued (failing after ARRIVAL_SECONDS)."""
    with anyio.fail_after(ARRIVAL_SECONDS):
        while True:
            result = await caller.ok("check_spend_alerts")
            notifications = result["notifications"]
            if notifications["pending"] == 0 and notifications["last_delivery"] is not None:
                return result
            await anyio.sleep(0.1)


async def save_low_balance_rules(caller: Caller, sandbox: RunningSandbox, count: int) -> list[str]:
    """Save `count` balance_below rules, each triggered by busy's balance; their names, in the order checks list
    them."""
    names = [f"low-{number:02d}" for number in range(count)]
    for name in names:
        await caller.ok("set_spend_alert", kind="balance_below", threshold=balance_of(sandbox) + 1, name=name)
    return names


@pytest.mark.anyio
async def test_a_tool_check_queues_a_saved_rules_transition_and_the_server_posts_it(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Issue 12 item 4: check_spend_alerts over stdio answers with the transition queued and no delivery claimed;
    the server posts it in the background, and a later check reports how that went."""
    params = stdio_params(settings_for(sandbox, tmp_path / "state"), TENSORFEED_ALERT_WEBHOOK_URL=receiver.url)
    with (tmp_path / "server.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            caller = Caller(client)
            [name] = await save_low_balance_rules(caller, sandbox, 1)
            queued = await caller.ok("check_spend_alerts")
            [post] = await anyio.to_thread.run_sync(receiver.wait_for, 1)
            reported = await reported_after_sending(caller)
    assert_hidden(read_recorded(tmp_path / "server.log"), json.dumps(queued), json.dumps(reported))
    assert (queued["notifications"]["pending"], queued["notifications"]["last_delivery"]) == (1, None)
    assert post.body["event"] == "triggered" and post.body["alert"] == queued["alerts"][0]
    delivery = reported["notifications"]["last_delivery"]
    assert (delivery["rule"], delivery["event"], delivery["outcome"]) == (name, "triggered", "delivered")


@pytest.mark.anyio
@pytest.mark.parametrize("transitions", [30, MAX_QUEUED_MESSAGES + 10])
async def test_a_tool_check_answers_within_its_deadline_while_the_receiver_hangs(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path, transitions: int
) -> None:
    """Audit finding 2: with many transitions at once and a receiver that answers nothing, check_spend_alerts
    answers within the call's deadline, with every message queued and none claimed delivered, up to the queue's
    bound: beyond it the oldest are dropped and counted. Once the receiver answers, the server posts each queued
    message once, in the background."""
    settings = settings_for(sandbox, tmp_path / "state")
    params = stdio_params(settings, TENSORFEED_ALERT_WEBHOOK_URL=receiver.url)
    with (tmp_path / "server.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            caller = Caller(client)
            names = await save_low_balance_rules(caller, sandbox, transitions)
            receiver.hold()
            started = time.monotonic()
            queued = await caller.ok("check_spend_alerts")
            took = time.monotonic() - started
            assert took < settings.deadline_seconds, f"check_spend_alerts took {took:.1f} s"
            receiver.release()
            kept = names[-MAX_QUEUED_MESSAGES:]
            posts = await anyio.to_thread.run_sync(receiver.wait_for, len(kept))
            reported = await reported_after_sending(caller)
    assert_hidden(read_recorded(tmp_path / "server.log"), json.dumps(queued), json.dumps(reported))
    notifications = queued["notifications"]
    assert queued["triggered"] == transitions and notifications["last_delivery"] is None
    assert (notifications["pending"], notifications["dropped"]) == (len(kept), transitions - len(kept))
    assert events(posts) == [("triggered", name) for name in kept]
    assert (reported["notifications"]["last_delivery"]["rule"], reported["notifications"]["dropped"]) == (
        kept[-1],
        transitions - len(kept),
    )


def server_pid() -> int:
    """The process id of the one child of this process that runs the console script (the stdio server)."""
    children = [
        int(pid) for task in Path("/proc/self/task").iterdir() for pid in (task / "children").read_text().split()
    ]
    [pid] = [pid for pid in children if console_script() in Path(f"/proc/{pid}/cmdline").read_text().split("\0")]
    return pid


def memory_mb(pid: int, field: str) -> float:
    """A process's VmRSS (resident now) or VmHWM (the most it ever had resident), in MiB."""
    [line] = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(f"{field}:")]
    return int(line.split()[1]) / 1024


@pytest.mark.anyio
async def test_a_huge_answer_is_not_read_and_the_servers_memory_stays_bounded(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Audit finding 1: the receiver answers 200 with a 256 MiB body. The server stops reading at once (the receiver
    gets to send only what the sockets' buffers hold), reports the message delivered, and its peak resident memory
    stays within a few MB of what it was."""
    receiver.answer_size = HUGE_ANSWER_BYTES
    params = stdio_params(settings_for(sandbox, tmp_path / "state"), TENSORFEED_ALERT_WEBHOOK_URL=receiver.url)
    with (tmp_path / "server.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            caller = Caller(client)
            await save_low_balance_rules(caller, sandbox, 1)
            pid = server_pid()
            before = memory_mb(pid, "VmRSS")
            await caller.ok("check_spend_alerts")
            [post] = await anyio.to_thread.run_sync(receiver.wait_for, 1)
            reported = await reported_after_sending(caller)
            peak = memory_mb(pid, "VmHWM")
    assert_hidden(read_recorded(tmp_path / "server.log"), json.dumps(reported))
    assert peak - before < MEMORY_ALLOWANCE_MB, f"resident memory went from {before:.0f} to {peak:.0f} MiB"
    assert post.answer_bytes < HUGE_ANSWER_BYTES // 16, f"the server took {post.answer_bytes:,} bytes of the answer"
    delivery = reported["notifications"]["last_delivery"]
    assert (delivery["outcome"], delivery["detail"]) == ("delivered", "HTTP 200")


@pytest.mark.anyio
async def test_the_server_retries_what_the_receiver_did_not_take_without_another_check(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Audit finding 2: three 5xx answers leave the message queued; the server's sender tries again by itself (no
    check in between) and delivers it; a later check reports that."""
    receiver.answer_with(500, 502, 503)
    params = stdio_params(settings_for(sandbox, tmp_path / "state"), TENSORFEED_ALERT_WEBHOOK_URL=receiver.url)
    with (tmp_path / "server.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
            caller = Caller(client)
            await save_low_balance_rules(caller, sandbox, 1)
            queued = await caller.ok("check_spend_alerts")
            posts = await anyio.to_thread.run_sync(receiver.wait_for, 4)
            reported = await reported_after_sending(caller)
    assert_hidden(read_recorded(tmp_path / "server.log"), json.dumps(queued), json.dumps(reported))
    assert queued["notifications"]["pending"] == 1
    assert [post.answered for post in posts] == [500, 502, 503, 200]
    assert all(post.body == posts[0].body for post in posts)
    assert reported["notifications"]["last_delivery"]["outcome"] == "delivered"


def test_a_500_then_200_is_delivered_once_after_a_retry(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Issue 12 item 3: a 5xx is retried; once delivered, the message is gone."""
    env = check_env(sandbox, tmp_path, **alert_vars(sandbox, receiver.url))
    receiver.answer_with(500, 200)
    first = check(env)
    assert_delivery(first, "triggered", "delivered")
    assert first.notifications["pending"] == 0
    tried = receiver.posts()
    assert [post.answered for post in tried] == [500, 200] and tried[0].body == tried[1].body
    again = check(env)
    assert (again.delivery, again.notifications["pending"], len(receiver.posts())) == (None, 0, 2)


def test_a_404_is_reported_once_and_not_retried(sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path) -> None:
    """Issue 12 item 3: a 4xx is not retried; the check that tried says so, and the message is dropped."""
    env = check_env(sandbox, tmp_path, **alert_vars(sandbox, receiver.url))
    receiver.answer_with(404)
    first = check(env)
    assert "404" in assert_delivery(first, "triggered", "failed")["detail"]
    assert (first.notifications["pending"], len(receiver.posts())) == (0, 1)
    again = check(env)
    assert (again.delivery, again.notifications["pending"], len(receiver.posts())) == (None, 0, 1)


def test_three_5xx_answers_keep_the_message_for_the_next_check(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Issue 12 item 3: three 5xx attempts within the backoff bound, then queued; the next check delivers it."""
    env = check_env(sandbox, tmp_path, **alert_vars(sandbox, receiver.url))
    receiver.answer_with(500, 502, 503)
    first = check(env)
    detail = assert_delivery(first, "triggered", "will_retry")["detail"]
    assert "HTTP 503" in detail and "3 attempts" in detail
    assert first.notifications["pending"] == 1
    tried = receiver.posts()
    assert len(tried) == 3 and tried[-1].at - tried[0].at < BACKOFF_BOUND_SECONDS
    second = check(env)
    assert_delivery(second, "triggered", "delivered")
    assert (second.notifications["pending"], len(receiver.posts())) == (0, 4)


def test_a_message_survives_a_receiver_outage(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Issue 12 item 2: with nothing listening the message stays queued; the next check, receiver up, sends it."""
    port = closed_port()
    env = check_env(sandbox, tmp_path, **alert_vars(sandbox, f"http://127.0.0.1:{port}{HOOK_PATH}"))
    down = check(env)
    assert "could not connect" in assert_delivery(down, "triggered", "will_retry")["detail"]
    assert down.notifications["pending"] == 1
    with receiving(port) as receiver:
        up = check(env)
        assert_delivery(up, "triggered", "delivered")
        assert up.notifications["pending"] == 0
        assert events(receiver.posts()) == [("triggered", RULE)]


def test_the_table_output_reports_failures_without_the_url(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """Issue 12 item 3: cron's plain output says a 404 was refused, and shows neither the path nor the token."""
    receiver.answer_with(404)
    done = run("check", env=check_env(sandbox, tmp_path, **alert_vars(sandbox, receiver.url)))
    assert done.returncode == EXIT_TRIGGERED, done.stderr
    assert "404" in done.stdout
    assert_hidden(done.stdout, done.stderr)


def test_only_transitions_seen_while_a_webhook_is_configured_are_posted(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """A first evaluation that finds the rule ok posts nothing, and a transition with no URL is not queued."""
    balance = balance_of(sandbox)
    ok_first = check(check_env(sandbox, tmp_path, **alert_vars(sandbox, receiver.url, threshold=balance - 1)))
    assert (ok_first.code, ok_first.delivery, ok_first.notifications["pending"]) == (EXIT_OK, None, 0)

    unconfigured = check(check_env(sandbox, tmp_path, **alert_vars(sandbox, None)))
    assert unconfigured.code == EXIT_TRIGGERED
    off = {"configured": False, "destination": None, "format": None, "pending": 0, "dropped": 0, "last_delivery": None}
    assert unconfigured.notifications == off

    configured = check(check_env(sandbox, tmp_path, **alert_vars(sandbox, receiver.url)))
    assert (configured.code, configured.delivery, configured.notifications["pending"]) == (EXIT_TRIGGERED, None, 0)
    assert receiver.posts() == []


def test_the_flag_overrides_the_variable(sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path) -> None:
    """`check --webhook-url` posts there, not to TENSORFEED_ALERT_WEBHOOK_URL."""
    unused = f"http://127.0.0.1:{closed_port()}{HOOK_PATH}"
    checked = check(check_env(sandbox, tmp_path, **alert_vars(sandbox, unused)), "--webhook-url", receiver.url)
    assert_delivery(checked, "triggered", "delivered")
    assert events(receiver.posts()) == [("triggered", RULE)]


@pytest.mark.parametrize(
    ("url", "chosen", "expected"),
    [
        (f"http://localhost:9{HOOK_PATH}", "", "json"),
        (f"http://[::1]:9{HOOK_PATH}", "", "json"),
        (f"http://127.0.0.1:9{HOOK_PATH}", "discord", "discord"),
        (f"https://hooks.slack.com{HOOK_PATH}", "", "slack"),
        (f"https://hooks.slack.com{HOOK_PATH}", "JSON", "json"),
        (f"https://discord.com/api/webhooks{HOOK_PATH}", "", "discord"),
        (f"https://discordapp.com/api/webhooks{HOOK_PATH}", "", "discord"),
    ],
    ids=["localhost", "ipv6-loopback", "chosen-discord", "slack-host", "chosen-json", "discord", "discordapp"],
)
def test_accepted_urls_and_the_format_each_implies(
    sandbox: RunningSandbox, tmp_path: Path, url: str, chosen: str, expected: str
) -> None:
    """Loopback http:// and any https:// load; the format is the chosen one, else inferred from the host.

    No rule is set, so nothing is sent: these hosts are never contacted.
    """
    variables = {URL_VARIABLE: url} | ({FORMAT_VARIABLE: chosen} if chosen else {})
    checked = check(check_env(sandbox, tmp_path, **variables))
    assert checked.code == EXIT_OK and checked.result["alerts"] == []
    notifications = checked.notifications
    assert (notifications["configured"], notifications["format"]) == (True, expected)
    assert (notifications["pending"], notifications["last_delivery"]) == (0, None)
    assert_destination(notifications["destination"], url)


def test_https_to_an_unreachable_host_loads_and_reports_could_not_connect(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """https:// to any host is accepted; a host that does not resolve is a delivery failure, not exit 2."""
    checked = check(check_env(sandbox, tmp_path, **alert_vars(sandbox, f"https://hooks.invalid{HOOK_PATH}")))
    assert checked.code == EXIT_TRIGGERED
    delivery = checked.delivery
    assert delivery is not None and delivery["outcome"] in ("will_retry", "failed")
    assert "could not connect" in delivery["detail"]
    assert checked.notifications["pending"] == (1 if delivery["outcome"] == "will_retry" else 0)


@pytest.mark.parametrize(
    ("variables", "args", "named"),
    [
        ({URL_VARIABLE: f"http://example.com{HOOK_PATH}"}, [], URL_VARIABLE),
        ({URL_VARIABLE: f"ftp://127.0.0.1{HOOK_PATH}"}, [], URL_VARIABLE),
        ({URL_VARIABLE: f"https://{HOOK_PATH}"}, [], URL_VARIABLE),
        ({URL_VARIABLE: f"https://127.0.0.1:99999{HOOK_PATH}"}, [], URL_VARIABLE),
        ({}, ["--webhook-url", f"http://example.com{HOOK_PATH}"], "WEBHOOK_URL"),
        ({URL_VARIABLE: f"http://127.0.0.1:9{HOOK_PATH}", FORMAT_VARIABLE: "teams"}, [], FORMAT_VARIABLE),
    ],
    ids=["remote-http", "ftp", "no-host", "bad-port", "flag-remote-http", "unknown-format"],
)
def test_a_bad_webhook_setting_is_refused_at_load(
    sandbox: RunningSandbox, tmp_path: Path, variables: dict[str, str], args: list[str], named: str
) -> None:
    """Exit 2 with one stderr line naming the setting and at most the URL's scheme and host; nothing is fetched.

    No rule is set, so a URL wrongly accepted would still be sent nothing.
    """
    before = sandbox.control.upstream_requests()
    done = run("check", *args, env=check_env(sandbox, tmp_path, **variables))
    assert done.returncode == EXIT_CANNOT_RUN and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert_hidden(done.stderr)
    assert sandbox.control.upstream_requests() == before


def test_record_posts_a_transition_once_as_check_does(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path
) -> None:
    """`record --webhook-url` (cron's one line) evaluates the rules after its snapshot and posts the transition;
    a check afterwards finds it already posted."""
    env = check_env(sandbox, tmp_path, **alert_vars(sandbox, None))
    recorded = run("record", "--webhook-url", receiver.url, env=env)
    assert_hidden(recorded.stdout, recorded.stderr)
    assert recorded.returncode == EXIT_OK and "alerts triggered: 1." in recorded.stdout, recorded.stdout
    assert events(receiver.posts()) == [("triggered", RULE)]
    checked = check(env, "--webhook-url", receiver.url)
    assert checked.delivery is None and events(receiver.posts()) == [("triggered", RULE)]


@pytest.mark.parametrize("command", ["check", "record"])
def test_check_and_record_stop_sending_at_their_budget_and_say_what_is_still_queued(
    sandbox: RunningSandbox, receiver: Receiver, tmp_path: Path, command: str
) -> None:
    """Audit finding 2: with the receiver hanging, `check` and `record` send for at most the call deadline (twice
    TENSORFEED_TIMEOUT_SECONDS), then exit saying the message is still queued; the next run delivers it."""
    budget = settings_for(sandbox, tmp_path).deadline_seconds
    env = check_env(sandbox, tmp_path, **alert_vars(sandbox, receiver.url))
    receiver.hold()
    started = time.monotonic()
    done = run(command, *(["--json"] if command == "check" else []), env=env)
    took = time.monotonic() - started
    receiver.release()
    assert_hidden(done.stdout, done.stderr)
    assert took < 2 * budget + START_ALLOWANCE_SECONDS, f"{command} took {took:.1f} s"
    if command == "check":
        notifications = json.loads(done.stdout)["notifications"]
        assert notifications["pending"] == 1
        assert notifications["last_delivery"]["outcome"] == "will_retry"
        assert f"{budget:g} s allowed for sending ran out" in notifications["last_delivery"]["detail"]
    else:
        assert done.returncode == EXIT_OK and "Webhook messages still queued: 1." in done.stdout, done.stdout
    after = check(env)
    assert_delivery(after, "triggered", "delivered")
    assert after.notifications["pending"] == 0


@pytest.mark.anyio
async def test_a_hosted_replica_sends_a_tenants_messages_only_once_that_tenant_checks_there(
    fresh_sandbox: RunningSandbox, receiver: Receiver, database_url: str, tmp_path: Path
) -> None:
    """Audit finding 2, hosted: hook-b's message, queued by a replica whose receiver was down, waits in the shared
    database while another replica serves hook-a; that replica posts hook-a's message after hook-a's check, and
    hook-b's only after hook-b checks there, each to the configured URL and carrying its own tenant's token."""
    for name in TENANTS:
        fresh_sandbox.control.create_account(name, 100)
    rule = {"TENSORFEED_ALERT_BALANCE_BELOW": "200"}
    down = f"http://127.0.0.1:{closed_port()}{HOOK_PATH}"
    logs = [tmp_path / "down.log", tmp_path / "up.log"]
    try:
        with running_replicas(
            replica_env(fresh_sandbox.api_url, database_url, None, **rule, **{URL_VARIABLE: down}), logs[:1]
        ) as [first]:
            async with tenant_client(first.url, TENANTS["hook-b"], "legacy") as client:
                assert (await Caller(client).ok("check_spend_alerts"))["notifications"]["pending"] == 1
        up = replica_env(fresh_sandbox.api_url, database_url, None, **rule, **{URL_VARIABLE: receiver.url})
        with running_replicas(up, logs[1:]) as [second]:
            async with tenant_client(second.url, TENANTS["hook-a"], "legacy") as client:
                await Caller(client).ok("check_spend_alerts")
                await reported_after_sending(Caller(client))
            assert [post.body["token"] for post in receiver.posts()] == [masked(TENANTS["hook-a"])]
            asked = time.monotonic()
            async with tenant_client(second.url, TENANTS["hook-b"], "2026-07-28") as client:
                assert (await Caller(client).ok("check_spend_alerts"))["notifications"]["pending"] == 1
                await reported_after_sending(Caller(client))
    finally:
        for log in logs:
            assert_hidden(read_recorded(log))
    posts = receiver.posts()
    assert [post.body["token"] for post in posts] == [masked(token) for token in TENANTS.values()]
    assert posts[1].at > asked and {post.path for post in posts} == {HOOK_PATH}
