"""Reading the JSON files the commands take, and the checks an error message can name a field by
(the request file's are in cli/outgoing.py, the directory file's in cli/inbound.py)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from dbmail.cli.errors import BadInput


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a shell file of ``export KEY='value'`` lines (the local stack's stack.env),
    as bash would read them: quoting, comments and values over several lines included."""
    env: dict[str, str] = {}
    for word in shlex.split(path.read_text(encoding="utf-8"), comments=True):
        key, separator, value = word.partition("=")
        if separator:
            env[key] = value
    return env


def kind(value: Any) -> str:
    """A JSON value's type as a person would name it, with the value itself when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, int):
        return f"an integer ({shown})"
    if isinstance(value, float):
        return f"a number ({shown})"
    if isinstance(value, str):
        return f"a string ({shown})"
    return type(value).__name__


def read_json(path: str) -> Any:
    """The file's JSON; a BadInput naming the file and the problem if it cannot be read or parsed."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a JSON file") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def expect(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise BadInput(f"{name} must be {expected}, not {kind(value)}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
