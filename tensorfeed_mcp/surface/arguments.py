"""How the surface speaks about its inputs and its errors: a refusal of a call's arguments in our own words, and
our errors' messages passed on to the client."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from mcp.server.mcpserver.exceptions import MCPServerError, ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from pydantic import ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

from tensorfeed_mcp.errors import TensorFeedError, shown

P = ParamSpec("P")
R = TypeVar("R")


def reported_as(error: type[MCPServerError]) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Pass our errors' messages (safe and actionable by design) to the client; the SDK hides anything else."""

    def decorate(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(handler)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await handler(*args, **kwargs)
            except TensorFeedError as exc:
                raise error(str(exc)) from None

        return wrapper

    return decorate


tool_errors = reported_as(ToolError)
resource_errors = reported_as(ResourceError)


def explained(message: str) -> WrapValidator:
    """Replace pydantic's generic complaint about a tool argument with one that says what is accepted."""

    def validate(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_argument", message) from None

    return WrapValidator(validate)


def unknown_arguments(owner: str, given: Iterable[str], accepted: list[str]) -> str | None:
    """The refusal of the names in `given` that `owner` (a tool or a prompt) does not take, saying what it accepts;
    None when it takes them all."""
    unknown = [name for name in given if name not in accepted]
    if not unknown:
        return None
    names = ", ".join(shown(name) for name in unknown[:5])
    return f"{owner} does not take {names}. It accepts: {', '.join(accepted) or 'no arguments'}."


def check_arguments(tool: Tool, arguments: dict[str, Any]) -> None:
    """Refuse unknown, missing and invalid arguments in our own words (never pydantic's, nor the value itself)."""
    accepted = list(tool.parameters.get("properties", {}))
    refusal = unknown_arguments(tool.name, arguments, accepted)
    if refusal:
        raise ToolError(refusal)
    try:
        tool.fn_metadata.validate_arguments(arguments)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "arguments"
        if error["type"] == "missing":
            raise ToolError(f"{tool.name} needs the argument {name!r}. It accepts: {', '.join(accepted)}.") from None
        raise ToolError(error["msg"] if error["type"] == "invalid_argument" else f"{name} is not valid.") from None


def compact_json(value: Any) -> str:
    """`value` as JSON without whitespace, non-ASCII characters kept as they are."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
