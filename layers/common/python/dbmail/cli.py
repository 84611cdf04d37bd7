"""`dbmail`: submit requests and inspect them from a shell (website developers and operators).

Settings come from the environment; with none set, `.local/stack.env` (written by `make up`)
is read, so the command works against the local stack out of the box.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from dbmail.errors import DbmailError


def load_env_file(path: Path) -> None:
    """Read `export KEY='value'` lines into os.environ without overriding what is set."""
    for line in path.read_text().splitlines():
        parts = shlex.split(line, comments=True)
        if parts[:1] == ["export"]:
            parts = parts[1:]
        for part in parts:
            key, sep, value = part.partition("=")
            if sep:
                os.environ.setdefault(key, value)


def _submit(args) -> int:
    from dbmail.client import submit_request

    spec = json.loads(Path(args.file).read_text(encoding="utf-8"))
    allowed = {"subject", "msgtext", "recipients", "sendto_fn_name", "sender", "creator", "var_dict",
               "special_headers", "processed_by", "public", "priority_level", "sent_by"}
    unknown = set(spec) - allowed
    if unknown:
        raise DbmailError(f"unknown fields in {args.file}: {sorted(unknown)}")
    print(submit_request(**spec))
    return 0


def _status(args) -> int:
    from dbmail.client import request_status

    print(json.dumps(request_status(args.request_id), indent=2))
    return 0


def _render(args) -> int:
    from dbmail.client import render_again

    print(json.dumps(render_again(args.request_id, args.email_key), indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dbmail", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", default=".local/stack.env",
                        help="settings to read when DBMAIL_* are not set (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="validate and submit a MessageRequest from a JSON file")
    submit.add_argument("file")
    submit.set_defaults(run=_submit)
    status = commands.add_parser("status", help="a request's state and counts")
    status.add_argument("request_id")
    status.set_defaults(run=_status)
    render = commands.add_parser("render", help="render a (sent) email again from its request")
    render.add_argument("request_id")
    render.add_argument("email_key")
    render.set_defaults(run=_render)
    args = parser.parse_args(argv)
    if "DBMAIL_REQUEST_TABLE" not in os.environ and Path(args.env_file).is_file():
        load_env_file(Path(args.env_file))
    try:
        return args.run(args)
    except DbmailError as exc:
        print(f"dbmail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
