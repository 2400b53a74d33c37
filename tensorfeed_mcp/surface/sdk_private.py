"""Every reach into the SDK's private attributes, each with the reason no public path serves (mcp 2.3)."""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.mcpserver.tools import Tool
from mcp.server.session import ServerSession


def connection_of(session: ServerSession) -> Connection:
    """The connection a request came on: handlers get its session, but only the connection holds the state and the
    exit stack that outlive the request."""
    return session._connection


def lowlevel_of(server: MCPServer[Any]) -> Server[Any]:
    """The server's low-level server: MCPServer has no public seam to add a request handler (resources/subscribe,
    logging/setLevel, a listen handler of our own) nor to run over streams of our own (stdio's malformed lines)."""
    return server._lowlevel_server


def tool_named(server: MCPServer[Any], name: str) -> Tool | None:
    """A registered tool by name, with its argument model: MCPServer lists tools only as wire types, without the
    model that validates a call's arguments."""
    return server._tool_manager.get_tool(name)
