"""Starts, stops and reports the local stack's processes: DynamoDB Local, moto and the runner.

Each process runs in its own session (process group) with a pid file under ``<state>/pids`` and a
log under ``<state>/logs``, so ``down`` stops exactly what ``up`` started, from any shell, and
a test session can run its own stack on free ports next to a developer's.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3

from . import DEFAULT_PARAMETERS, DEFAULT_TEMPLATE, REPO_ROOT
from .cfn import LocalTarget, Template
from .function_urls import local_urls, url_variable
from .resources import ClientFactory, create_resources, resource_variables

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_DYNAMODB_PORT = 8000
DEFAULT_MOTO_PORT = 5000
DEFAULT_SMTP_PORT = 2525  # the runner's SMTP front for SES receipt rules
EMULATORS = ("dynamodb", "moto")
RUNNER = "runner"
EMULATOR_STOP_TIMEOUT = 10.0
RUNNER_STOP_TIMEOUT = 30.0  # the runner first lets in-flight invocations finish
START_TIMEOUT = 60.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class StackError(Exception):
    """The local stack could not be started or is not running."""


@dataclass(frozen=True)
class StatePaths:
    """Where one local stack keeps its pid files, logs, outbox, checkpoints and stack.env."""

    root: Path

    @classmethod
    def resolve(cls, state_dir: Path | str | None = None) -> "StatePaths":
        """The given directory, else $DBMAIL_LOCAL_DIR, else ``.local`` in the repository."""
        chosen = state_dir or os.environ.get("DBMAIL_LOCAL_DIR") or REPO_ROOT / ".local"
        return cls(Path(chosen).resolve())

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def async_events(self) -> Path:
        """Events queued for asynchronous invocation and not yet done with (see async_invoke.py)."""
        return self.root / "async"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"

    @property
    def config_file(self) -> Path:
        """What ``up`` was given (template, parameters, URLs), for ``start-runner`` to reuse."""
        return self.root / "stack.json"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def ready_file(self, name: str) -> Path:
        """Written by a runner once its triggers run (it holds the runner's pid)."""
        return self.pids / f"{name}.ready"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        for directory in (self.pids, self.logs, self.outbox, self.checkpoints, self.async_events):
            directory.mkdir(parents=True, exist_ok=True)


# ---- files ----------------------------------------------------------------------------


def write_atomically(path: Path, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) so that a reader sees the old file or the new, never part.

    The one way the local stack writes a file others read while it runs (stack.env, stack.json,
    stream checkpoints, queued asynchronous events, the outbox, the faults file and its
    acknowledgement): a hidden ``.<name>.partial`` next to it, then os.replace.
    """
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(partial, path)


# ---- stack.env ------------------------------------------------------------------------


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """Writes ``export KEY='value'`` lines that bash and sh can source."""
    invalid = [key for key in env if not _ENV_NAME.fullmatch(key)]
    if invalid:
        raise StackError(f"not valid environment variable names: {invalid}")
    lines = ["# The dbmail local stack's environment, written by `python -m dbmail_local up`. Source it."]
    lines += [f"export {key}={_shell_quote(value)}" for key, value in sorted(env.items())]
    write_atomically(path, "\n".join(lines) + "\n")


def stack_environment(
    state: StatePaths, template: Template, dynamodb_url: str, moto_url: str, smtp_port: int
) -> dict[str, str]:
    """Everything a client or a handler needs to use the local stack, as environment variables."""
    region = template.target.region
    return {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        # Any service without its own endpoint below goes to moto, never to a real AWS account.
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url,
        "AWS_ENDPOINT_URL_DYNAMODB_STREAMS": dynamodb_url,
        "AWS_ENDPOINT_URL_SQS": moto_url,
        "AWS_ENDPOINT_URL_SES": moto_url,
        "AWS_ENDPOINT_URL_SESV2": moto_url,
        "AWS_ENDPOINT_URL_S3": moto_url,
        "AWS_ENDPOINT_URL_SECRETSMANAGER": moto_url,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "DBMAIL_LOCAL_STATE_DIR": str(state.root),
        "DBMAIL_LOCAL_OUTBOX": str(state.outbox),
        "DBMAIL_LOCAL_DYNAMODB_URL": dynamodb_url,
        "DBMAIL_LOCAL_MOTO_URL": moto_url,
        "DBMAIL_LOCAL_SMTP_HOST": HOST,
        "DBMAIL_LOCAL_SMTP_PORT": str(smtp_port),
        **resource_variables(template),
        # the runner's function URLs (function_urls.py), which `!GetAtt <Function>Url.FunctionUrl` names
        **{url_variable(logical_id): url for logical_id, url in template.target.function_urls.items()},
        **template.environment(),
    }


_ENDPOINT_SUFFIX = {"dynamodbstreams": "DYNAMODB_STREAMS"}


def client_factory(env: Mapping[str, str]) -> ClientFactory:
    """boto3 clients for the stack described by ``env`` (a stack.env), cached and thread-safe."""
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    clients: dict[str, Any] = {}
    lock = threading.Lock()  # a boto3 Session is not thread-safe; the clients it makes are

    def client(service: str) -> Any:
        with lock:
            if service not in clients:
                suffix = _ENDPOINT_SUFFIX.get(service, service.upper())
                endpoint = env.get(f"AWS_ENDPOINT_URL_{suffix}", env["AWS_ENDPOINT_URL"])
                clients[service] = session.client(service, endpoint_url=endpoint)
            return clients[service]

    return client


# ---- processes ------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # reaps it if this process started it and it exited
        if reaped:
            return False
    except ChildProcessError:
        pass  # started by another `up`: not ours to wait for
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: make sure a recycled pid is not mistaken for ours
        command = cmdline.read_bytes()
        return b"dbmail_local" in command or b"DynamoDBLocal.jar" in command
    return True


def running_pid(state: StatePaths, name: str) -> int | None:
    """The pid of the named process if its pid file names a live process of ours."""
    try:
        pid = int(state.pid_file(name).read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if _alive(pid) else None


def _spawn(state: StatePaths, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    with open(state.log_file(name), "ab") as log_stream:
        process = subprocess.Popen(
            argv,
            cwd=state.root,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one, immune to our Ctrl-C
        )
    state.pid_file(name).write_text(f"{process.pid}\n")
    log.info("started", extra={"component": name, "pid": process.pid, "log": str(state.log_file(name))})
    return process


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _wait_until(
    condition: Callable[[], bool], process: subprocess.Popen, state: StatePaths, name: str, what: str
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if process.poll() is not None:
            raise StackError(
                f"{name} exited with status {process.returncode} before {what}; "
                f"{state.log_file(name)} ends with:\n{_log_tail(state.log_file(name))}"
            )
        if time.monotonic() > deadline:
            raise StackError(f"{name} did not get to {what} within {START_TIMEOUT:.0f} s; see {state.log_file(name)}")
        time.sleep(0.05)


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))  # DynamoDB Local listens on every interface
        except OSError:
            return False
    return True


def choose_port(preferred: int, taken: Collection[int] = ()) -> int:
    """``preferred`` if it is free, else any free port not in ``taken`` (0: any free port)."""
    if preferred and preferred not in taken and _port_free(preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("0.0.0.0", 0))
            port = probe.getsockname()[1]
        if port not in taken:
            return port


def stop_process(state: StatePaths, name: str, timeout: float) -> str:
    """SIGTERM to the process group, SIGKILL after ``timeout``; "stopped", "killed" or "not running"."""
    pid = running_pid(state, name)
    outcome = "not running"
    if pid is not None:
        outcome = "stopped"
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            log.warning("did not stop in time; killing it", extra={"component": name, "pid": pid, "timeout": timeout})
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
            outcome = "killed"
        log.info(outcome, extra={"component": name, "pid": pid})
    state.pid_file(name).unlink(missing_ok=True)
    state.ready_file(name).unlink(missing_ok=True)
    return outcome


def _signal_group(pid: int, signum: int) -> None:
    """Signals the process group ``pid`` leads, or just the process (a runner in a terminal)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signum)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _process_names(state: StatePaths) -> list[str]:
    """Emulators first, then every runner that has a pid file."""
    runners = sorted(path.stem for path in state.pids.glob("*.pid") if path.stem not in EMULATORS)
    return [*EMULATORS, *runners]


# ---- the stack ------------------------------------------------------------------------


def _dynamodb_local_dir() -> Path:
    return Path(os.environ.get("DBMAIL_LOCAL_DYNAMODB_DIR", REPO_ROOT / ".vendor" / "dynamodb-local"))


def _dynamodb_argv(port: int) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise StackError("DynamoDB Local needs Java 17 (Debian: openjdk-17-jre-headless)")
    home = _dynamodb_local_dir()
    jar = home / "DynamoDBLocal.jar"
    if not jar.is_file():
        raise StackError(f"{jar} is missing: run ./scripts/setup.sh")
    return [
        java,
        # C1-only JIT and the serial GC halve the JVM's start-up (3.7 s to 1.6 s on 2 cores)
        # with no measurable loss of throughput for a local workload.
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        f"-Djava.library.path={home / 'DynamoDBLocal_lib'}",
        "-jar",
        str(jar),
        "-inMemory",
        "-sharedDb",
        "-disableTelemetry",
        "-port",
        str(port),
    ]


FAULTS_FILE = "faults.json"  # in the state directory: faults the moto server injects, for tests
FAULTS_LOAD_TIMEOUT = 5.0


def _moto_argv(port: int, outbox: Path, faults: Path, smtp_port: int, hop_recipients: list[str]) -> list[str]:
    hop = (
        ["--ses-hop", f"{HOST}:{smtp_port}", "--ses-hop-recipients", ",".join(hop_recipients)] if hop_recipients else []
    )
    return [
        sys.executable,
        "-m",
        "dbmail_local.moto_server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--outbox",
        str(outbox),
        "--faults",
        str(faults),
        *hop,
    ]


def write_faults(state: StatePaths, spec: Mapping[str, Any] | None, *, timeout: float = FAULTS_LOAD_TIMEOUT) -> None:
    """Switches the faults the stack's moto injects (None: none); returns once moto has them.

    ``spec`` is the faults file's JSON (see moto_server.FaultSpec), e.g.
    ``{"ses_send": {"throttle": 0.2, "transient": 0.1, "permanent": 0.0}, "sqs_duplicate": 0.05, "seed": 7}``.
    It is checked, then written to ``<state>/faults.json`` atomically (None removes the file);
    when moto runs this waits until it has loaded that version (it looks every 0.2 s).
    """
    from .moto_server import FaultSpec, faults_ack_path, faults_file_key  # imports moto: only for tests

    path = state.root / FAULTS_FILE
    if spec is None:
        path.unlink(missing_ok=True)
    else:
        FaultSpec.from_json(spec)  # a ValueError here, not an error in moto's log
        write_atomically(path, json.dumps(spec, indent=2) + "\n")
    if running_pid(state, "moto") is None:
        return
    key, ack = faults_file_key(path), faults_ack_path(path)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if ack.read_text(encoding="utf-8").strip() == key:
                return
        if time.monotonic() > deadline:
            raise StackError(f"moto did not load {path} within {timeout:.0f} s; see {state.log_file('moto')}")
        time.sleep(0.05)


def up(
    state: StatePaths,
    *,
    dynamodb_port: int = DEFAULT_DYNAMODB_PORT,
    moto_port: int = DEFAULT_MOTO_PORT,
    smtp_port: int = DEFAULT_SMTP_PORT,
    template: Path = DEFAULT_TEMPLATE,
    parameters: Path = DEFAULT_PARAMETERS,
    runner_env: Mapping[str, str] | None = None,
) -> bool:
    """Starts DynamoDB Local, moto, the template's resources and the runner.

    Returns False, changing nothing, when the stack already runs. Ports that are taken are
    replaced by free ones; stack.env says which were used (the SMTP port is the runner's, for
    its SES receipt rules). ``runner_env`` adds variables to the runner's environment (e.g.
    DBMAIL_LOCAL_RETRY_DELAY).
    """
    state.create()
    if all(running_pid(state, name) for name in EMULATORS):
        if running_pid(state, RUNNER):
            log.info("the local stack is already up", extra={"state_dir": str(state.root)})
            return False
        log.info("the emulators are up but the runner is not: starting it")
        start_runner(state, extra_env=runner_env)
        return True
    down(state)  # whatever is left of a half-running stack has lost its in-memory data anyway
    shutil.rmtree(state.checkpoints)  # new tables have new streams
    shutil.rmtree(state.async_events)  # queued events name messages the new emulators do not have
    state.create()

    ports = {"dynamodb": choose_port(dynamodb_port)}
    ports["moto"] = choose_port(moto_port, taken=set(ports.values()))
    ports["smtp"] = choose_port(smtp_port, taken=set(ports.values()))
    from .ses_receiving import receipt_rules  # here: it imports the runner's modules, which import this one

    dynamodb_url, moto_url = (f"http://{HOST}:{ports[name]}" for name in EMULATORS)
    loaded = Template.load(template, parameters, target=LocalTarget(sqs_url=moto_url))
    url_ports: dict[str, int] = {}
    for logical_id in loaded.url_functions():  # any free ports: a test's stack runs beside a developer's
        url_ports[logical_id] = choose_port(0, taken={*ports.values(), *url_ports.values()})
    urls = local_urls(loaded, url_ports)
    loaded = Template.load(template, parameters, target=LocalTarget(sqs_url=moto_url, function_urls=urls))
    env = stack_environment(state, loaded, dynamodb_url, moto_url, ports["smtp"])
    try:
        processes = {
            "dynamodb": _spawn(state, "dynamodb", _dynamodb_argv(ports["dynamodb"])),
            "moto": _spawn(
                state,
                "moto",
                _moto_argv(
                    ports["moto"],
                    state.outbox,
                    state.root / FAULTS_FILE,
                    ports["smtp"],
                    [entry for rule in receipt_rules(loaded) for entry in rule.recipients],
                ),
            ),
        }
        for name, process in processes.items():
            _wait_until(partial(_port_answers, ports[name]), process, state, name, f"listening on port {ports[name]}")
        created = create_resources(loaded, client_factory(env))
        log.info(
            "resources ready",
            extra={"tables": created.tables, "queues": created.queues, "ses_identities": created.ses_identities},
        )
        write_env_file(state.env_file, env)
        config = {
            "template": str(Path(template).resolve()),
            "parameters": str(Path(parameters).resolve()),
            "dynamodb_url": dynamodb_url,
            "moto_url": moto_url,
            "runner_url": f"smtp://{HOST}:{ports['smtp']}",
            "function_urls": urls,  # the runner serves them (function_urls.py)
        }
        write_atomically(state.config_file, json.dumps(config, indent=2) + "\n")
        start_runner(state, extra_env=runner_env)
    except BaseException:
        down(state)
        raise
    log.info("the local stack is up", extra={"env_file": str(state.env_file), "outbox": str(state.outbox)})
    return True


def start_runner(
    state: StatePaths,
    *,
    name: str = RUNNER,
    template: Path | None = None,
    parameters: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    smtp_port: int | None = None,
) -> int:
    """Starts a runner in the background and waits until its triggers run; returns its pid.

    Template and parameters default to what ``up`` was given. Other names run further runners
    (e.g. for a test template) against the same emulators; ``down`` stops them too. Each needs
    its own ``smtp_port`` if its template has receipt rules (default: stack.env's).
    """
    if not state.env_file.is_file():
        raise StackError(f"{state.env_file} is missing: the local stack is not up")
    pid = running_pid(state, name)
    if pid is not None:
        log.info("already running", extra={"component": name, "pid": pid})
        return pid
    config = json.loads(state.config_file.read_text())
    argv = [
        sys.executable,
        "-m",
        "dbmail_local",
        "runner",
        "--state-dir",
        str(state.root),
        "--name",
        name,
        "--template",
        str(template or config["template"]),
        "--parameters",
        str(parameters or config["parameters"]),
    ]
    if smtp_port is not None:
        argv += ["--smtp-port", str(smtp_port)]
    state.ready_file(name).unlink(missing_ok=True)
    process = _spawn(state, name, argv, env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    ready = state.ready_file(name)
    try:
        _wait_until(
            lambda: ready.is_file() and ready.read_text().strip() == str(process.pid),
            process,
            state,
            name,
            "running its triggers",
        )
    except BaseException:
        stop_process(state, name, RUNNER_STOP_TIMEOUT)
        raise
    return process.pid


def stop_runner(state: StatePaths, *, name: str = RUNNER, timeout: float = RUNNER_STOP_TIMEOUT) -> str:
    """Stops a runner; the emulators keep their data and the runner's checkpoints stay."""
    return stop_process(state, name, timeout)


def down(state: StatePaths, *, timeout: float = EMULATOR_STOP_TIMEOUT) -> None:
    """Stops every process of the stack: runners first (they may still be writing), then emulators."""
    if not state.pids.is_dir():
        return
    names = _process_names(state)
    for name in names[len(EMULATORS) :]:
        stop_process(state, name, max(timeout, RUNNER_STOP_TIMEOUT))
    for name in EMULATORS:
        stop_process(state, name, timeout)


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


def status(state: StatePaths) -> list[ProcessStatus]:
    """One row per process of the stack (emulators, then runners), running or not."""
    if not state.pids.is_dir():
        return [ProcessStatus(name, None, state.log_file(name)) for name in (*EMULATORS, RUNNER)]
    names = _process_names(state)
    if RUNNER not in names:
        names.append(RUNNER)
    return [ProcessStatus(name, running_pid(state, name), state.log_file(name)) for name in names]
