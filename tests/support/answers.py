"""Reading values out of JSON answers."""

from __future__ import annotations

import re
from typing import Any


def timestamps_in(value: Any) -> list[str]:
    """Every string in a JSON value that starts like an ISO date and time, in document order."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in timestamps_in(item)]
    if isinstance(value, list):
        return [text for item in value for text in timestamps_in(item)]
    return [value] if isinstance(value, str) and re.match(r"\d{4}-\d{2}-\d{2}T", value) else []
