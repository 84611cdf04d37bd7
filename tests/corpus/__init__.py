"""The mail corpus: real-world messages and hostile ones, for tests that run mail through dbmail.

    from tests.corpus import corpus_messages
    for name, raw in corpus_messages():          # ("clients/talon-gmail.eml", b"...")
        ...

Sets: ``cpython`` (CPython's email test messages), ``clients`` (messages from real mail clients,
taken from PyPI packages' test data; sources in clients/README.md) and ``hostile`` (written for
dbmail to attack the forwarder; see hostile/README.md and hostile/build.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

CORPUS = Path(__file__).resolve().parent
SETS = {"cpython": "msg_*.txt", "clients": "*.eml", "hostile": "*.eml"}


def corpus_messages(sets: tuple[str, ...] = ("cpython", "clients", "hostile")) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of every message in the given sets, in a stable order; the name is
    the path under tests/corpus/."""
    for folder in sets:
        for path in sorted((CORPUS / folder).glob(SETS[folder])):
            yield f"{folder}/{path.name}", path.read_bytes()


def corpus_message(name: str) -> bytes:
    """One message by its name (e.g. "hostile/to-60-addresses.eml")."""
    return (CORPUS / name).read_bytes()
