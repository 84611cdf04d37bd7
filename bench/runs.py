"""The bench's side of a measured run: requests written as the website writes them, and a worker
process per run (bench/worker.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dbmail.client import submit_request
from dbmail_local.demo import generate_recipients
from dbmail_local.stack import StatePaths

SENDER = "Splash <splash@example.org>"
VARS = {"program": {"name": "Splash 2026", "startdate": "November 28"}}


def submit(size: int, subject: str, body: str, sendto: str) -> str:
    """A request to ``size`` generated recipients; its stream record waits for a worker."""
    return submit_request(
        subject=subject,
        msgtext=body,
        recipients=generate_recipients(size),
        sendto_fn_name=sendto,
        sender=SENDER,
        var_dict=VARS,
    )


def run_worker(state: StatePaths, kind: str, subject: str, capture: Path | None = None) -> dict[str, Any]:
    """Runs ``python -m bench.worker`` and returns its result; its output goes to the stack's logs."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as result:
        result_file = Path(result.name)
    argv = [sys.executable, "-m", "bench.worker", kind, str(state.root), str(result_file), subject]
    if capture is not None:
        argv += ["--capture", str(capture)]
    log = state.log_file(f"bench-{kind}")
    with log.open("ab") as output:
        completed = subprocess.run(argv, stdout=output, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"bench worker {kind} failed (exit {completed.returncode}); see {log}")
    try:
        return json.loads(result_file.read_text())
    finally:
        result_file.unlink()
