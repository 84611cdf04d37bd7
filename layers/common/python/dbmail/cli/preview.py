"""Trying a request before submitting it: `dbmail preview` writes one recipient's email as a .eml
and an .html file (and with --open a PNG of the HTML, through headless chromium) and prints the
spam-safety hints; `dbmail send-test` sends one copy, marked [TEST], to an address."""

from __future__ import annotations

import argparse
import html
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from dbmail.cli.errors import EXIT_OK, BadInput
from dbmail.cli.files import read_json
from dbmail.cli.outgoing import check_request_spec
from dbmail.core.errors import ConfigurationError

CHROMIUM = "/usr/bin/chromium"  # Debian's package
# headless, and none of chromium's own network traffic (a closed network refuses it, slowly)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
CHROMIUM_SECONDS = 60
WINDOW = "900,1400"


def _chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    if found is None:
        raise ConfigurationError("--open needs chromium (apt-get install chromium), which is not installed")
    return found


def screenshot(page: Path, png: Path) -> Path:
    """``page`` rendered by headless chromium into ``png`` (a fresh profile, no network of its own)."""
    with tempfile.TemporaryDirectory(prefix="dbmail-chromium-") as profile:
        command = [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={WINDOW}",
            page.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise ConfigurationError(f"chromium did not render {page} within {CHROMIUM_SECONDS} s") from None
    if done.returncode != 0 or not png.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigurationError(f"chromium could not render {page} (exit {done.returncode}): {last}")
    return png


def _request_and_user(args) -> tuple[dict, dict | None]:
    spec = check_request_spec(read_json(args.file))
    user = None
    if getattr(args, "user_json", None):
        user = read_json(args.user_json)
        if not isinstance(user, dict):
            raise BadInput(f"{args.user_json}: must be a JSON object of recipient fields")
    return spec, user


def _preview(args) -> int:
    from dbmail.client import preview

    spec, user = _request_and_user(args)
    shown = preview(spec, recipient=args.recipient, user=user)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(args.file).stem}-{'user' if user is not None else args.recipient or 0}"
    eml, page = out / f"{stem}.eml", out / f"{stem}.html"
    eml.write_bytes(shown["eml"])
    if shown["html"] is not None:
        page.write_text(shown["html"], encoding="utf-8")
    else:  # a text body: shown as the mail client would, in a <pre>
        page.write_text(
            f'<!doctype html><meta charset="utf-8"><title>{html.escape(shown["subject"])}</title>'
            f'<pre style="white-space:pre-wrap">{html.escape(shown["text"])}</pre>\n',
            encoding="utf-8",
        )
    print(f"subject: {shown['subject']}")
    print(f"from:    {shown['send_from']}")
    print(f"to:      {', '.join(shown['send_to'])}")
    print(eml)
    print(page)
    if args.open:
        print(screenshot(page, out / f"{stem}.png"))
    for hint in shown["hints"]:
        print(f"hint: {hint}")
    return EXIT_OK


def _send_test(args) -> int:
    from dbmail.client import send_test

    spec, user = _request_and_user(args)
    sent = send_test(spec, args.to, recipient=args.recipient, user=user)
    print(
        f"sent {sent['subject']!r} to {sent['to']} (Message-ID {sent['message_id']}, provider id {sent['provider_id']})"
    )
    return EXIT_OK


def _recipient_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", help="a request file: submit_request's fields as JSON (see examples/request.json, docs/schema.md)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--recipient", type=int, help="which of the file's recipients to render, counting from 0 (default: the first)"
    )
    which.add_argument(
        "--user-json",
        metavar="FILE",
        help="render for this user instead: a JSON object of recipient fields (user_id, email, first_name, ..., vars)",
    )


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``command(name, run, summary)`` adds a subcommand (see build_parser)."""
    shown = command(
        "preview",
        _preview,
        "render one recipient's email of a request file (nothing is submitted): write it as .eml and .html, "
        "print the paths and spam-safety hints",
    )
    _recipient_options(shown)
    shown.add_argument("--out", default=".", help="the directory to write into (default: the current one)")
    shown.add_argument(
        "--open", action="store_true", help="also render the HTML to a PNG with headless chromium and print its path"
    )
    test = command(
        "send-test",
        _send_test,
        "send one rendered copy of a request file's email to an address, subject marked [TEST] "
        "(never stored, never counted in a request)",
    )
    _recipient_options(test)
    test.add_argument("--to", required=True, metavar="ADDRESS", help="where to send the test copy")
