"""The stdio transport: one client on stdin and stdout."""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

from tensorfeed_mcp.surface.sdk_private import lowlevel_of


async def serve_stdio(server: MCPServer[Any]) -> None:
    """Serve over stdin/stdout, answering a line that is not JSON-RPC with a JSON-RPC error (the SDK drops it)."""
    async with stdio_server() as (read_stream, write_stream):
        send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def answer_malformed_lines() -> None:
            async with send, read_stream:
                async for item in read_stream:
                    if isinstance(item, Exception):
                        await write_stream.send(SessionMessage(_malformed_line_error(item)))
                    else:
                        await send.send(item)

        async with anyio.create_task_group() as group:
            group.start_soon(answer_malformed_lines)
            lowlevel = lowlevel_of(server)
            await lowlevel.run(receive, write_stream, lowlevel.create_initialization_options())


def _malformed_line_error(exc: Exception) -> JSONRPCError:
    """The answer to a line the SDK could not read as a message: a parse error, else an invalid request (invalid
    params when a request's params are not an object), with the request's id when the line holds a readable one."""
    not_json = isinstance(exc, ValidationError) and any(error["type"] == "json_invalid" for error in exc.errors())
    line = _rejected_object(exc)
    request_id = line.get("id") if "method" in line else None  # a broken response is no request to answer
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        request_id = None
    if not_json:
        code, message = PARSE_ERROR, "Parse error: the line is not valid JSON."
    elif request_id is not None and not isinstance(line.get("params", {}), dict):
        code, message = INVALID_PARAMS, "Invalid params: a request's params must be a JSON object."
    else:
        code, message = INVALID_REQUEST, "Invalid request: the line is JSON but not a JSON-RPC 2.0 message MCP accepts."
    return JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))


def _rejected_object(exc: Exception) -> dict[str, Any]:
    """The JSON object a line held, read back from the SDK's validation error (pydantic gives the whole object as
    the input of a missing field, and a request lacks the result of a response); empty when there is none."""
    if isinstance(exc, ValidationError):
        for error in exc.errors():
            line = error.get("input")
            if error["type"] == "missing" and len(error["loc"]) == 2 and isinstance(line, dict):
                return line
    return {}
