"""The tensorfeed-mcp command: serve (the default, over stdio), check, record, history, sandbox, demo.

Logs go to stderr only: over stdio, stdout belongs to the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import cast

import anyio

from tensorfeed_mcp import __version__
from tensorfeed_mcp.errors import ConfigurationError, StateStoreError, TensorFeedError
from tensorfeed_mcp.observability.logs import configure_logging
from tensorfeed_mcp.settings.environment import Settings, load_settings
from tensorfeed_mcp.settings.redaction import redact_logs

EXIT_OK, EXIT_TRIGGERED, EXIT_CANNOT_RUN = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorfeed-mcp",
        description="MCP server for a TensorFeed API account. With no command it serves over stdio.",
        epilog="The token comes from TENSORFEED_TOKEN; see the README for every environment variable.",
    )
    parser.add_argument("--version", action="version", version=f"tensorfeed-mcp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve MCP (stdio, streamable HTTP or legacy SSE)")
    serve.add_argument("--transport", choices=["stdio", "streamable-http", "sse"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        help="file holding the bearer secret HTTP clients must send (instead of TENSORFEED_MCP_AUTH_TOKEN)",
    )
    serve.add_argument(
        "--multi-tenant",
        action="store_true",
        help="hosted mode: serve many users, each sending their own token as 'Authorization: Bearer tf_live_…' "
        "(or TENSORFEED_MCP_MULTI_TENANT=1); streamable HTTP only; needs the hosted extra",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another Host name clients may use to reach this server (repeatable); loopback names always work",
    )

    check = commands.add_parser(
        "check", help="evaluate the alert rules once; exit 0 ok, 1 triggered, 2 could not check"
    )
    check.add_argument("--json", action="store_true", help="print the full result as JSON instead of a table")
    record = commands.add_parser(
        "record", help="take one snapshot for the spend ledger and evaluate the alert rules (for cron); exit 0 or 2"
    )
    for command in (check, record):
        command.add_argument(
            "--webhook-url",
            metavar="URL",
            help="post alert transitions here (instead of TENSORFEED_ALERT_WEBHOOK_URL); https, or http to this "
            "machine",
        )

    history = commands.add_parser("history", help="print spend per UTC day from the ledger, with a bar per day")
    history.add_argument("--days", type=int, default=7, help="UTC days back, today included (1 to 90; default 7)")
    history.add_argument("--json", action="store_true", help="print the full result as JSON instead of a table")

    sandbox = commands.add_parser("sandbox", help="run the local stand-in for the TensorFeed API with demo accounts")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one)")

    commands.add_parser("demo", help="run the whole thing end to end against a local sandbox")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("text")
    command = args.command or "serve"
    try:
        if command == "sandbox":
            from tensorfeed_mcp.sandbox import serve as serve_sandbox

            serve_sandbox(args.host, args.port)
            return EXIT_OK
        if command == "demo":
            from tensorfeed_mcp.demo import run_demo

            return run_demo()
        webhook_url = getattr(args, "webhook_url", None)
        settings = load_settings({**os.environ, "TENSORFEED_ALERT_WEBHOOK_URL": webhook_url} if webhook_url else None)
        if getattr(args, "multi_tenant", False):
            settings = dataclasses.replace(settings, multi_tenant=True)
        configure_logging(settings.log_format)
        redact_logs(settings)
        if command in ("check", "record", "history"):
            return anyio.run(_run_once, settings, command, args)
        return _serve(settings, args)
    except (ConfigurationError, StateStoreError) as exc:  # a state store that cannot be opened at start, too
        print(f"tensorfeed-mcp: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        return EXIT_OK


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    """Choose the mode's runtime and transport, once, and serve until stopped."""
    transport = getattr(args, "transport", "stdio")
    secret_file: Path | None = getattr(args, "auth_token_file", None)  # a bare `tensorfeed-mcp` has no flags
    if secret_file is not None:
        try:
            secret = secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"Cannot read --auth-token-file {secret_file}: {exc.strerror}") from None
        if not secret:
            raise ConfigurationError(f"--auth-token-file {secret_file} is empty.")
        settings = dataclasses.replace(settings, mcp_auth_token=secret)
    if settings.multi_tenant:
        from tensorfeed_mcp.runtime.hosted import HostedRuntime
        from tensorfeed_mcp.transports.hosted_http import check_hosted_settings, serve_hosted

        check_hosted_settings(settings, transport)
        anyio.run(serve_hosted, HostedRuntime(settings), args.host, args.port, args.allow_host)
        return EXIT_OK
    from tensorfeed_mcp.runtime.local import LocalRuntime

    if transport == "stdio":
        from tensorfeed_mcp.transports.stdio import serve_stdio

        anyio.run(serve_stdio, LocalRuntime(settings).server())
        return EXIT_OK
    from tensorfeed_mcp.transports.local_http import HttpTransport, serve_http

    anyio.run(serve_http, LocalRuntime(settings), cast(HttpTransport, transport), args.host, args.port, args.allow_host)
    return EXIT_OK


async def _run_once(settings: Settings, command: str, args: argparse.Namespace) -> int:
    """check, record or history: one look at the account, one answer on stdout, or one line on stderr and exit 2."""
    from tensorfeed_mcp.report import format_alert_check, format_history
    from tensorfeed_mcp.service.account import AccountService

    try:
        async with AccountService.open(settings) as service:
            if command == "record":
                balance = await service.snapshot()
                check = await service.check_alerts()  # so cron's one line also alerts (and posts to a webhook)
                print(
                    f"Recorded a snapshot at {balance.as_of:%Y-%m-%d %H:%M:%S} UTC: balance {balance.balance:,} "
                    f"credits, {balance.spent_lifetime:,} spent over the token's life; alerts triggered: "
                    f"{check.triggered}."
                    + (f" Webhook messages still queued: {queued}." if (queued := check.notifications.pending) else "")
                )
                return EXIT_OK
            if command == "history":
                # Unlike the tool, fail (exit 2) when the account cannot be read: cron should hear of it.
                history = await service.spend_history(args.days, "day", fresh=True)
                print(history.model_dump_json(indent=2) if args.json else format_history(history))
                return EXIT_OK
            check = await service.check_alerts()
    except TensorFeedError as exc:
        print(f"tensorfeed-mcp {command}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except Exception as exc:  # exit 1 means "triggered", so no failure may fall through to a traceback
        print(f"tensorfeed-mcp {command}: failed ({type(exc).__name__}); please report this.", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(check.model_dump_json(indent=2) if args.json else format_alert_check(check))
    return EXIT_TRIGGERED if check.triggered else EXIT_OK
