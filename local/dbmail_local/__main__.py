"""dbmail-local: run dbmail on this machine (DynamoDB Local, moto, and a runner playing Lambda).

  up            start the stack in the background (a no-op if it already runs)
  down          stop everything the stack started
  status        show what runs
  runner        run the functions in the foreground (`up` starts one in the background)
  stop-runner   stop the background runner; the emulators keep their data
  start-runner  start the background runner again (it resumes its stream checkpoints)
  demo          the whole outgoing path on the local stack, with a summary

State (pid files, logs, outbox, checkpoints, stack.env) lives in --state-dir, else
$DBMAIL_LOCAL_DIR, else .local in the repository. `source <state>/stack.env` to use the stack.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from dbmail.cli.files import read_env_file

from . import DEFAULT_PARAMETERS, DEFAULT_TEMPLATE, logs
from .cfn import TemplateError
from .stack import (
    DEFAULT_DYNAMODB_PORT,
    DEFAULT_MOTO_PORT,
    DEFAULT_SMTP_PORT,
    EMULATOR_STOP_TIMEOUT,
    RUNNER,
    StackError,
    StatePaths,
    down,
    start_runner,
    status,
    stop_runner,
    up,
)

log = logging.getLogger("dbmail_local.cli")  # also when run as __main__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbmail-local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", type=Path, help="the stack's state directory (default: .local)")
    # Also accepted after the command; SUPPRESS keeps a value given before it.
    state_dir = argparse.ArgumentParser(add_help=False)
    state_dir.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    template = argparse.ArgumentParser(add_help=False)
    template.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    template.add_argument("--parameters", type=Path, default=DEFAULT_PARAMETERS, help="flat JSON of parameter values")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    start = commands.add_parser("up", parents=[state_dir, template], help="start the stack")
    start.add_argument("--dynamodb-port", type=int, default=DEFAULT_DYNAMODB_PORT, help="0: any free port")
    start.add_argument("--moto-port", type=int, default=DEFAULT_MOTO_PORT, help="0: any free port")
    start.add_argument("--smtp-port", type=int, default=DEFAULT_SMTP_PORT, help="the SES inbound SMTP front; 0: any")
    stop = commands.add_parser("down", parents=[state_dir], help="stop the stack")
    stop.add_argument("--timeout", type=float, default=EMULATOR_STOP_TIMEOUT, help="seconds before SIGKILL")
    commands.add_parser("status", parents=[state_dir], help="show what runs")
    foreground = commands.add_parser("runner", parents=[state_dir, template], help="run the functions here")
    foreground.add_argument("--name", default=RUNNER, help="names its ready file (for extra runners)")
    foreground.add_argument("--smtp-port", type=int, help="where SES receipt rules listen (default: stack.env's)")
    commands.add_parser("stop-runner", parents=[state_dir], help="stop the background runner")
    commands.add_parser("start-runner", parents=[state_dir], help="start the background runner")
    demo = commands.add_parser("demo", parents=[state_dir], help="send the demo requests through the stack")
    demo.add_argument("--timeout", type=float, default=300.0)
    return parser


def _print_status(state: StatePaths) -> int:
    rows = status(state)
    urls = json.loads(state.config_file.read_text()) if state.config_file.is_file() else {}
    print(f"state: {state.root}")
    for row in rows:
        where = urls.get(f"{row.name}_url", "") if row.running else ""
        print(
            f"  {row.name:<10} {'running' if row.running else 'stopped':<8} "
            f"{('pid ' + str(row.pid)) if row.running else '':<11} {where:<24} log: {row.log}"
        )
    if all(row.running for row in rows):
        for function, url in urls.get("function_urls", {}).items():
            print(f"  {function:<24} {url}")
        print(f"source {state.env_file} to use it; mail lands in {state.outbox}/")
        return 0
    return 1


def _install_default_rules(state: StatePaths) -> None:
    """A new site starts with the original's four EmailList rules, so a fresh stack does too."""
    env = read_env_file(state.env_file)
    if "DBMAIL_EMAILLIST_TABLE" not in env:
        return  # a template without inbound mail
    os.environ.update(env)
    from dbmail.client import install_default_email_lists

    rules = install_default_email_lists()
    log.info("default EmailList rules installed", extra={"rules": [rule.list_id for rule in rules]})


def _demo(state: StatePaths, timeout: float) -> int:
    """Runs the demo on the stack; a stack the demo started is stopped again (the outbox stays)."""
    from .demo import run_demo

    started = up(state)
    try:
        os.environ.update(read_env_file(state.env_file))
        return run_demo(state.outbox, timeout=timeout)
    finally:
        if started:
            down(state)
            print(f"stack    stopped (it was started for the demo); the mail stays in {state.outbox}/")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state = StatePaths.resolve(args.state_dir)
    if args.command == "runner":
        from .runner import main as run_in_foreground

        return run_in_foreground(state, args.template, args.parameters, args.name, args.smtp_port)
    logs.configure(json_lines=False)
    try:
        if args.command == "up":
            started = up(
                state,
                dynamodb_port=args.dynamodb_port,
                moto_port=args.moto_port,
                smtp_port=args.smtp_port,
                template=args.template,
                parameters=args.parameters,
            )
            if started:
                _install_default_rules(state)
            return _print_status(state)
        if args.command == "down":
            down(state, timeout=args.timeout)
            return 0
        if args.command == "status":
            return _print_status(state)
        if args.command == "stop-runner":
            stop_runner(state)
            return 0
        if args.command == "start-runner":
            start_runner(state)
            return 0
        return _demo(state, args.timeout)
    except (StackError, TemplateError) as error:
        log.error(str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
