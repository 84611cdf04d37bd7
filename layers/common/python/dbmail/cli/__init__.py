"""`dbmail`: submit requests and inspect them from a shell (website developers and operators).

Settings come from the environment; with none set, `.local/stack.env` (written by `make up`)
is read, so the command works against the local stack out of the box. `--stack-name NAME` reads
them from a deployed stack instead (its CloudFormation outputs and parameters; cli/stack.py).

Errors never print a traceback: the command prints ONE line on stderr, `dbmail: <what is wrong>`,
and exits with a status that says whose problem it is:

  0  done
  1  internal error, a bug in dbmail: the line names the exception; `dbmail --debug ...` shows the traceback
  2  bad input: an unreadable or malformed request/directory file, a missing argument, an unknown id,
     or a request submit_request refuses (its RequestInvalid subclass is named in the line)
  3  the stack is unreachable or misconfigured: DynamoDB/SQS cannot be reached, settings or AWS
     credentials are missing, or AWS answered with an error

`--debug` re-raises every error with its traceback instead.

The modules: this one reads the settings, builds the parser and runs a command; cli/outgoing.py,
cli/preview.py, cli/suppressions.py and cli/inbound.py are the commands (with their arguments), cli/stack.py reads
a deployed stack's settings, cli/files.py reads their JSON files, cli/errors.py turns any error
into the one line and the exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dbmail.cli import inbound, outgoing, preview, suppressions
from dbmail.cli.errors import EXIT_CODES_EPILOG, EXIT_INTERRUPTED, explain, one_line
from dbmail.cli.files import read_env_file
from dbmail.core.errors import ConfigurationError

__all__ = ["build_parser", "main"]


def load_env_file(path: Path) -> None:
    """Read `export KEY='value'` lines into os.environ without overriding what is set."""
    for key, value in read_env_file(path).items():
        os.environ.setdefault(key, value)


def build_parser() -> argparse.ArgumentParser:
    """Every positional and option has a help= string (tests/unit/test_cli.py checks each subcommand)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="dbmail", description=__doc__.splitlines()[0], epilog=EXIT_CODES_EPILOG, formatter_class=formatter
    )
    parser.add_argument(
        "--env-file",
        default=".local/stack.env",
        help="settings to read when DBMAIL_* are not set (default: %(default)s)",
    )
    parser.add_argument(
        "--stack-name",
        help="a deployed stack (sam deploy's stack name, in AWS_REGION): its outputs and parameters "
        "are the settings, instead of DBMAIL_* or --env-file",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on any error, raise it with its Python traceback instead of printing one line",
    )
    # A subcommand's own --debug (`dbmail submit x.json --debug`) leaves the top-level one alone when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on any error, raise it with its Python traceback instead of printing one line",
    )
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do; `dbmail COMMAND --help` describes its arguments",
    )

    def command(name: str, run: Callable[[argparse.Namespace], int], summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=EXIT_CODES_EPILOG,
            formatter_class=formatter,
            parents=[common],
        )
        sub.set_defaults(run=run)
        return sub

    outgoing.add_commands(command)
    preview.add_commands(command)
    suppressions.add_commands(command)
    inbound.add_commands(command)
    return parser


def _quiet_service_logs(debug: bool) -> None:
    """The services log for CloudWatch (with tracebacks); a person at a shell gets the one-line
    outcomes instead, unless --debug asks for the logs (on stderr)."""
    import logging

    if debug:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    elif not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits 2 (argparse's usage line and message)
    _quiet_service_logs(args.debug)
    try:
        if args.stack_name:
            from dbmail.cli.stack import use_stack

            args.stack = use_stack(args.stack_name)
        elif "DBMAIL_REQUEST_TABLE" not in os.environ and Path(args.env_file).is_file():
            try:
                load_env_file(Path(args.env_file))
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"{args.env_file}: cannot read settings: {exc}") from exc
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dbmail: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        code, message = explain(exc)
        print(f"dbmail: {one_line(message)}", file=sys.stderr)
        return code
