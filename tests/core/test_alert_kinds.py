"""The alert-kind registry is the one declaration of what a kind is: the model's enum, the tool's schema and
description, the environment's rules, the README's tables and server.json all agree with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from tensorfeed_mcp.core.alerts import ALERT_KINDS, KINDS_HELP, make_rule
from tensorfeed_mcp.errors import InvalidInputError
from tensorfeed_mcp.models import AlertKind
from tensorfeed_mcp.sandbox import RunningSandbox
from tensorfeed_mcp.settings.environment import load_settings
from tests.support import ROOT
from tests.support.clients import in_memory
from tests.support.env import settings_for


def test_the_models_enum_lists_the_registrys_kinds_in_order() -> None:
    assert list(get_args(AlertKind)) == list(ALERT_KINDS)


def test_each_kinds_environment_variable_makes_an_env_rule_of_that_kind() -> None:
    settings = load_settings({spec.env_variable: "7" for spec in ALERT_KINDS.values()})
    assert [(rule.name, rule.kind, rule.unit, rule.threshold) for rule in settings.env_alert_rules] == [
        (f"env:{spec.name}", spec.name, spec.unit, 7.0) for spec in ALERT_KINDS.values()
    ]


def test_the_readme_tables_and_server_json_follow_the_registry() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in ALERT_KINDS.values():
        assert f"| `{spec.name}` | {spec.unit_help} | {spec.triggers_when} |" in readme
        assert (
            f"| `{spec.env_variable}` | (none) | an environment alert rule: `{spec.name}` ({spec.unit_help}) |"
            in readme
        )
    declared = json.loads((ROOT / "server.json").read_text())["packages"][0]["environmentVariables"]
    alert_variables = {item["name"] for item in declared if item["name"].startswith("TENSORFEED_ALERT_")}
    assert {spec.env_variable for spec in ALERT_KINDS.values()} <= alert_variables


@pytest.mark.anyio
async def test_set_spend_alert_describes_every_kind(sandbox: RunningSandbox, tmp_path: Path) -> None:
    async with in_memory(settings_for(sandbox, tmp_path), "legacy") as client:
        [tool] = [tool for tool in (await client.list_tools()).tools if tool.name == "set_spend_alert"]
    assert tool.input_schema["properties"]["kind"]["description"] == f"One of: {KINDS_HELP}."
    for spec in ALERT_KINDS.values():
        assert f"{spec.name}: {spec.triggers_when}" in (tool.description or "")


def test_a_kinds_own_bounds_are_enforced_with_what_they_are() -> None:
    for spec in ALERT_KINDS.values():
        if spec.bounds is None:
            continue
        make_rule(spec.name, spec.bounds.high)
        with pytest.raises(InvalidInputError, match=f"^{spec.bounds.what} must be from "):
            make_rule(spec.name, spec.bounds.high + 1)
