"""The command line as users and cron run it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tensorfeed_mcp.sandbox import DEMO_TOKENS, RunningSandbox
from tests.support.cli import EXIT_CANNOT_RUN, EXIT_OK, EXIT_TRIGGERED, run
from tests.support.env import server_env, settings_for
from tests.support.servers import console_script


@pytest.mark.parametrize("args", [[], ["serve"], ["check"], ["sandbox"], ["demo"]])
def test_help_everywhere(args: list[str]) -> None:
    done = run(*args, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: tensorfeed-mcp")


def test_version() -> None:
    assert re.fullmatch(r"tensorfeed-mcp \d+\.\d+\.\d+\n", run("--version").stdout)


def test_check_exits_0_when_nothing_is_triggered(sandbox: RunningSandbox, tmp_path: Path) -> None:
    env = server_env(settings_for(sandbox, tmp_path)) | {"TENSORFEED_ALERT_BALANCE_BELOW": "10"}
    done = run("check", env=env)
    assert done.returncode == EXIT_OK, done.stderr
    assert re.search(r"env:balance_below\s+ok", done.stdout)
    assert f"Balance {sandbox.control.account('busy')['balance']} credits" in done.stdout


def test_check_exits_1_when_a_rule_is_triggered_and_prints_json(sandbox: RunningSandbox, tmp_path: Path) -> None:
    env = server_env(settings_for(sandbox, tmp_path, account="low")) | {"TENSORFEED_ALERT_RUNWAY_BELOW_HOURS": "24"}
    done = run("check", "--json", env=env)
    assert done.returncode == EXIT_TRIGGERED, done.stderr
    check = json.loads(done.stdout)
    assert check["triggered"] == 1 and check["balance"] == 12
    assert check["alerts"][0]["name"] == "env:runway_below_hours" and check["alerts"][0]["status"] == "triggered"
    table = run("check", env=env)
    assert table.returncode == EXIT_TRIGGERED and re.search(
        r"env:runway_below_hours\s+triggered\s+critical", table.stdout
    )


def test_check_exits_2_when_it_cannot_check(sandbox: RunningSandbox, tmp_path: Path) -> None:
    env = server_env(settings_for(sandbox, tmp_path, token=None))
    no_token = run("check", env=env)
    assert no_token.returncode == EXIT_CANNOT_RUN and "TENSORFEED_TOKEN" in no_token.stderr
    assert no_token.stdout == ""

    down = run("check", env=env | {"TENSORFEED_TOKEN": DEMO_TOKENS["busy"], "TENSORFEED_API_URL": "http://127.0.0.1:9"})
    assert down.returncode == EXIT_CANNOT_RUN and "Could not connect" in down.stderr

    revoked = run("check", env=env | {"TENSORFEED_TOKEN": "tf_live_" + "f" * 64})
    assert revoked.returncode == EXIT_CANNOT_RUN and "token not recognised: revoked or mistyped" in revoked.stderr


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("TENSORFEED_TIMEOUT_SECONDS", "soon", "TENSORFEED_TIMEOUT_SECONDS"),
        ("TENSORFEED_CACHE_SECONDS", "-1", "TENSORFEED_CACHE_SECONDS"),
        ("TENSORFEED_ALERT_POLL_SECONDS", "5", "at least 30"),
        ("TENSORFEED_ALERT_BALANCE_BELOW", "lots", "TENSORFEED_ALERT_BALANCE_BELOW"),
        ("TENSORFEED_ALERT_DAILY_CAP_PCT_ABOVE", "250", "from 1 to 100"),
    ],
)
def test_bad_settings_are_named_at_start(tmp_path: Path, name: str, value: str, fragment: str) -> None:
    done = run("check", env={"TENSORFEED_MCP_STATE_DIR": str(tmp_path), name: value})
    assert done.returncode == EXIT_CANNOT_RUN and fragment in done.stderr
    assert "Traceback" not in done.stderr


DECIMAL_RANGE = "give a number from {} to {} (digits, with at most one decimal point)"
WHOLE_RANGE = "give a whole number from {} to {} (digits only)"
ALERT_FORMAT = "give a number in digits, with at most one decimal point"


def ranged(template: str, low: object, high: int) -> tuple[str, str, str]:
    """A setting whose refusals, of form and of size alike, give its range."""
    refusal = template.format(low, f"{high:,}")
    return str(high), refusal, refusal


NUMERIC_SETTINGS: dict[str, tuple[str, str, str]] = {
    # variable: (the largest value accepted, what a refusal of its form says, what a refusal of its size says)
    "TENSORFEED_TIMEOUT_SECONDS": ranged(DECIMAL_RANGE, "0.1", 120),
    "TENSORFEED_CACHE_SECONDS": ranged(DECIMAL_RANGE, 0, 3600),
    "TENSORFEED_POLL_SECONDS": ranged(DECIMAL_RANGE, 0, 86400),
    "TENSORFEED_ALERT_POLL_SECONDS": ranged(DECIMAL_RANGE, 0, 86400),
    "TENSORFEED_MCP_SESSION_IDLE_SECONDS": ranged(DECIMAL_RANGE, 10, 86400),
    "TENSORFEED_MCP_LISTEN_STREAM_SECONDS": ranged(DECIMAL_RANGE, 1, 86400),
    "TENSORFEED_MCP_MAX_SESSIONS": ranged(WHOLE_RANGE, 1, 1000),
    "TENSORFEED_LEDGER_CALL_DAYS": ranged(WHOLE_RANGE, 7, 3650),
    "TENSORFEED_MCP_TENANT_CALLS_PER_MINUTE": ranged(WHOLE_RANGE, 1, 10000),
    "TENSORFEED_MCP_NEW_TOKENS_PER_MINUTE": ranged(WHOLE_RANGE, 1, 10000),
    "TENSORFEED_ALERT_BALANCE_BELOW": ("100000000", ALERT_FORMAT, "at most 100,000,000 credits"),
    "TENSORFEED_ALERT_DAILY_SPEND_ABOVE": ("100000000", ALERT_FORMAT, "at most 100,000,000 credits"),
    "TENSORFEED_ALERT_DAILY_CAP_PCT_ABOVE": ("100", ALERT_FORMAT, "from 1 to 100"),
    "TENSORFEED_ALERT_RUNWAY_BELOW_HOURS": ("87600", ALERT_FORMAT, "at most 87,600 hours"),
    "TENSORFEED_ALERT_DAILY_SPEND_SPIKE_PCT": ("10000", ALERT_FORMAT, "at most 10,000 percent"),
}
WHOLE_NUMBER_SETTINGS = {name for name, (_, form, _) in NUMERIC_SETTINGS.items() if "whole number" in form}
# Digits int() or float() read but ASCII has not ("²" passes str.isdigit, then int() refuses it), float() syntax,
# and numbers too large for anything downstream.
MALFORMED_NUMBERS = ("\u00b2", "\uff11\uff12", "1e3")
OVERSIZED_NUMBER = "99999999999999999999"


def numeric_refusals() -> list[tuple[str, str, str]]:
    """(variable, value, what the refusal must say) for every numeric setting."""
    cases = []
    for name, (largest, form, size) in NUMERIC_SETTINGS.items():
        malformed = [*MALFORMED_NUMBERS, *(["12.5"] if name in WHOLE_NUMBER_SETTINGS else [])]
        cases += [(name, value, form) for value in malformed]
        above = str(int(largest) + 1) if name in WHOLE_NUMBER_SETTINGS else largest + ".5"
        cases += [(name, value, size) for value in (above, OVERSIZED_NUMBER)]
    return cases


@pytest.mark.parametrize(("name", "value", "accepted"), numeric_refusals())
def test_a_numeric_setting_not_in_ascii_digits_or_out_of_range_exits_2_with_one_line(
    tmp_path: Path, name: str, value: str, accepted: str
) -> None:
    done = run("check", env={"TENSORFEED_MCP_STATE_DIR": str(tmp_path), name: value})
    assert (done.returncode, done.stdout) == (EXIT_CANNOT_RUN, ""), done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"tensorfeed-mcp: {name}=") and accepted in line, line


@pytest.mark.parametrize("name", NUMERIC_SETTINGS)
def test_each_numeric_setting_accepts_its_largest_value(sandbox: RunningSandbox, tmp_path: Path, name: str) -> None:
    done = run("check", env=server_env(settings_for(sandbox, tmp_path)) | {name: NUMERIC_SETTINGS[name][0]})
    assert done.returncode in (EXIT_OK, EXIT_TRIGGERED) and done.stderr == "", done.stderr


def test_the_sandbox_command_serves_and_prints_the_demo_tokens() -> None:
    process = subprocess.Popen(
        [console_script(), "sandbox", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2 + len(DEMO_TOKENS))]
    finally:
        process.terminate()
        process.wait(timeout=10)
    text = "".join(lines)
    assert re.search(r"TensorFeed sandbox serving at http://127\.0\.0\.1:\d+/api", text)
    for name, token in DEMO_TOKENS.items():
        assert f"{name:5} {token}" in text


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    done = run("demo", timeout=120)
    assert done.returncode == EXIT_OK, done.stderr
    for tool in ("get_account_balance", "get_account_usage", "get_payment_history", "get_spend_cap"):
        assert f"== {tool}" in done.stdout
    assert "Balance: 1,840 credits" in done.stdout
    assert re.search(r"balance_below\s+triggered", done.stdout)
    assert "Cap restored to 200" in done.stdout
    assert "Warning" not in done.stderr  # no deprecation noise for the user
