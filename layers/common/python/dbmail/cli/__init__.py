"""The ``dbmail`` command for operators and chapter admins (``dbmail --help``)."""

from dbmail.cli.commands import main

__all__ = ["main"]
