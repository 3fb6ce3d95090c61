"""JSON request bodies parsed with Trustee's limits.

serde_json refuses nesting deeper than its recursion limit (128 levels; the 128th nested
array/object fails with "recursion limit exceeded"), so Trustee answers a deeply nested body
with the endpoint's ordinary 4xx error. Python's parser would recurse far deeper or raise
RecursionError; this module checks the depth first, in one linear pass, and turns both into
ValueError so every endpoint answers as Trustee does.
"""

from __future__ import annotations

import json
from typing import Any

SERDE_JSON_MAX_DEPTH = 127


class JsonBodyError(ValueError):
    """The body is not JSON Trustee would deserialize."""


def nesting_depth(text: str) -> int:
    """Deepest array/object nesting of JSON `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads(body: bytes | str) -> Any:
    """json.loads with serde_json's depth limit; JsonBodyError for anything it refuses."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        raise JsonBodyError("body is not UTF-8") from None
    if nesting_depth(text) > SERDE_JSON_MAX_DEPTH:
        raise JsonBodyError("recursion limit exceeded")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise JsonBodyError(str(exc)) from None
