"""The container files, checked as far as they can be without a container engine: the Dockerfile's stages, the
compose file's variables and commands against the code that reads them, and the load balancer's configuration.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from typing import Any

from tensorfeed_mcp.cli import _parser
from tests.support import ROOT

PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMPOSE = (ROOT / "compose.yaml").read_text()
NGINX = (ROOT / "deploy" / "nginx.conf").read_text()
REPLICAS = ("mcp-a", "mcp-b")

Instruction = tuple[str, str]
"""A Dockerfile instruction: its keyword in capitals and the rest of it, continuation lines joined."""


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's build stages in order, each starting with its FROM."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[Instruction]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, f"{line!r} comes before the first FROM"
        stages[-1].append((keyword.upper(), " ".join(rest.split())))
    return stages


def arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [rest for found, rest in stage if found == keyword]


def check_serve_command(command: list[str]) -> None:
    """`command` is the hosted server on port 8000 of every interface, as the CLI itself parses it."""
    assert command[0] == "tensorfeed-mcp"
    parsed = _parser().parse_args(command[1:])
    assert (parsed.command, parsed.transport, parsed.multi_tenant) == ("serve", "streamable-http", True)
    assert (parsed.host, parsed.port) == ("0.0.0.0", 8000)


def test_the_build_stage_makes_the_wheel_from_everything_the_project_declares() -> None:
    build = dockerfile_stages()[0]
    copied = {source for rest in arguments(build, "COPY") for source in rest.split()[:-1]}
    project = PYPROJECT["project"]
    found = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]  # patterns such as "tensorfeed_mcp*"
    packages = {pattern.rstrip("*").split(".")[0] for pattern in found}
    assert {"pyproject.toml", project["readme"], *project["license-files"], *packages} <= copied
    assert any(re.search(r"pip wheel .*--no-deps|python -m build .*--wheel", rest) for rest in arguments(build, "RUN"))


def test_the_final_stage_installs_the_wheel_with_the_hosted_extra_and_runs_as_a_user() -> None:
    stages = dockerfile_stages()
    final = stages[-1]
    assert len(stages) >= 2 and final[0] == ("FROM", "python:3.11-slim")
    build_name = arguments(stages[0], "FROM")[0].split(" AS ")[-1]
    installs = [rest for rest in arguments(final, "RUN") if "pip install" in rest]
    assert len(installs) == 1 and f"from={build_name}" in installs[0]
    assert re.search(r"tensorfeed_mcp-\*\.whl", installs[0]) and "[hosted]" in installs[0]
    assert "hosted" in PYPROJECT["project"]["optional-dependencies"]
    assert not arguments(final, "COPY") and not arguments(final, "ADD")  # the wheel is all it takes from the source
    users = arguments(final, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")  # the last USER is the one the container runs as
    assert arguments(final, "EXPOSE") == ["8000"]
    [healthcheck] = arguments(final, "HEALTHCHECK")
    assert '"python"' in healthcheck and "http://127.0.0.1:8000/healthz" in healthcheck
    [cmd] = arguments(final, "CMD")
    check_serve_command(json.loads(cmd))


def test_the_compose_file_sets_only_variables_the_server_reads() -> None:
    config = (ROOT / "tensorfeed_mcp" / "settings" / "environment.py").read_text()
    variables = set(re.findall(r"\bTENSORFEED_MCP_[A-Z_]+\b", COMPOSE))
    assert {"TENSORFEED_MCP_DATABASE_URL", "TENSORFEED_MCP_LOG_FORMAT"} <= variables
    assert {name for name in variables if f'"{name}"' not in config} == set()
    assert re.search(r"TENSORFEED_MCP_LOG_FORMAT: json\n", COMPOSE)
    url = re.search(r"TENSORFEED_MCP_DATABASE_URL: \"(postgresql://[^\"]+)\"", COMPOSE)
    assert url and url.group(1).endswith("@postgres:5432/tensorfeed")
    password = re.search(r"\$\{\w+:-[^}]+\}", url.group(1))  # one variable, one default, for both ends
    assert password and f'POSTGRES_PASSWORD: "{password.group(0)}"' in COMPOSE


def test_the_replicas_run_the_hosted_server_behind_the_balancer() -> None:
    [command] = re.findall(r"\bcommand: (\[[^\]]*\])", COMPOSE)
    check_serve_command(json.loads(command))
    assert _parser().parse_args(json.loads(command)[1:]).allow_host == ["lb"]
    services = re.findall(r"^  ([a-z][a-z0-9-]*):", COMPOSE.split("\nservices:\n")[1], flags=re.MULTILINE)
    assert set(services) >= {"postgres", *REPLICAS, "lb"}
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in COMPOSE
    assert '"127.0.0.1:8000:8000"' in COMPOSE


def test_nginx_balances_both_replicas_and_streams() -> None:
    upstream = re.search(r"upstream (\S+) \{([^}]*)\}", NGINX)
    assert upstream
    servers = re.findall(r"^\s*server (\S+)", upstream.group(2), flags=re.MULTILINE)
    assert servers == [f"{replica}:8000" for replica in REPLICAS]
    assert re.search(r"^\s*keepalive \d+;", upstream.group(2), flags=re.MULTILINE)
    location = NGINX.split("location / {")[1]
    assert f"proxy_pass http://{upstream.group(1)};" in location
    for directive in ("proxy_http_version 1.1;", 'proxy_set_header Connection "";', "proxy_buffering off;"):
        assert directive in location
    timeout = re.search(r"proxy_read_timeout (\d+)([smh]);", location)
    assert timeout and int(timeout.group(1)) * {"s": 1, "m": 60, "h": 3600}[timeout.group(2)] >= 600


def test_the_build_context_leaves_out_environments_caches_and_history() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git/", ".venv/", ".cache/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", ".hypothesis/"} <= ignored


# `docker compose` (the compose plugin) judges the file as the engine would; a machine with only the docker client
# (this project's does not have the plugin) cannot run it, so the test exists only where the plugin answers.
def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


if _compose_plugin():

    def test_docker_compose_accepts_the_file() -> None:
        checked = subprocess.run(
            ["docker", "compose", "-f", "compose.yaml", "config", "-q"], cwd=ROOT, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stderr
