"""`python -m dbmail_local` as a developer uses it: up, up again, status, runner restart, down."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dbmail.cli.files import read_env_file

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dbmail_local", *args], capture_output=True, text=True, timeout=120, check=False
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie nobody reaped is gone too
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _pids(state: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text()) for path in (state / "pids").glob("*.pid")}


def test_cli_lifecycle_on_a_taken_port_leaves_nothing_running(tmp_path):
    state = str(tmp_path)
    started: set[int] = set()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            up = _cli("up", "--state-dir", state, "--dynamodb-port", "0", "--moto-port", str(port))
            assert up.returncode == 0, up.stderr
            pids = _pids(tmp_path)
            started |= set(pids.values())
            assert set(pids) == {"dynamodb", "moto", "runner"}
            env = read_env_file(tmp_path / "stack.env")
            assert env["DBMAIL_LOCAL_MOTO_URL"] != f"http://127.0.0.1:{port}"
            # a fresh stack is a new site: it has the original's four EmailList rules
            rules = subprocess.run(
                [sys.executable, "-m", "dbmail.cli", "lists", "list"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
                env={**os.environ, **env},
            ).stdout
            assert [json.loads(line)["seq"] for line in rules.splitlines()] == [10, 20, 30, 40]

            again = _cli("up", "--state-dir", state)
            assert again.returncode == 0 and "already up" in again.stderr
            assert _pids(tmp_path) == pids

            second = _cli("runner", "--state-dir", state)  # would consume the same stream twice
            assert second.returncode == 1 and "already runs" in second.stderr

            status = _cli("--state-dir", state, "status")
            assert status.returncode == 0 and status.stdout.count(" running ") == 3

            assert _cli("stop-runner", "--state-dir", state).returncode == 0
            assert _gone(pids["runner"])
            stopped = _cli("status", "--state-dir", state)
            assert stopped.returncode == 1 and "runner     stopped" in stopped.stdout
            assert _cli("start-runner", "--state-dir", state).returncode == 0
            started |= set(_pids(tmp_path).values())
            assert _cli("status", "--state-dir", state).returncode == 0
        finally:
            down = _cli("down", "--state-dir", state)
    assert down.returncode == 0, down.stderr
    assert _pids(tmp_path) == {}
    assert [pid for pid in started if not _gone(pid)] == []
    assert _cli("status", "--state-dir", state).returncode == 1
