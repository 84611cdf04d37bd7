"""Rendering per recipient: dbmail's expansion path (the request prepared once, then each
recipient rendered: outgoing/expand.prepare(...).render) against the original's path, Django
compiling subject and body for each recipient (bench/django_render.py), run in a throwaway
virtualenv so that Django never enters dbmail's runtime."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import time
import venv
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from dbmail.core.models import bind_models
from dbmail.core.settings import Settings
from dbmail.outgoing.expand import prepare

DJANGO_SCRIPT = Path(__file__).with_name("django_render.py")
DJANGO_DISTRIBUTIONS = ("django", "asgiref", "sqlparse")
PIP_TIMEOUT = 300
RECIPIENT_FIELDS = ("user_id", "username", "email", "first_name", "last_name", "guardian_name", "guardian_email")
SETTINGS = Settings(
    allowed_sender_domains=("example.org",),
    default_sender="Splash <splash@example.org>",
    email_host_sender="info@example.org",
    site_url="https://esp.example.org",
)


def dbmail_seconds(subject: str, body: str, users: list[dict], variables: dict, repeats: int) -> list[float]:
    models = bind_models(SETTINGS)
    request = models.MessageRequest(
        request_id="bench",
        subject=subject,
        msgtext=body,
        sender="Splash <splash@example.org>",
        created_at=datetime.now(UTC),
        message_vars=variables,
        template_dialect="django",
    )
    recipients = [
        models.EmailRequest(
            request_id="bench", recipient_key=f"{n:08d}", vars=u.get("vars"), **{f: u.get(f) for f in RECIPIENT_FIELDS}
        )
        for n, u in enumerate(users)
    ]
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        prepared = prepare(request, SETTINGS)
        for recipient in recipients:
            prepared.render(recipient)
        seconds.append(time.perf_counter() - started)
    return seconds


def wheel_of_installed(name: str, out: Path) -> Path:
    """A wheel of the distribution installed here, zipped from its RECORD (no index needed;
    its scripts, outside site-packages, are left out)."""
    distribution = importlib.metadata.distribution(name)
    root = Path(str(distribution.locate_file("")))
    tag = distribution.metadata["Name"].replace("-", "_")
    path = out / f"{tag}-{distribution.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in distribution.files or []:
            if ".." not in file.parts and "__pycache__" not in file.parts and (root / file).is_file():
                wheel.write(root / file, file.as_posix())
    return path


def django_python(directory: Path) -> tuple[Path, str]:
    """A throwaway virtualenv with Django (the version dbmail's tests use, if installed here);
    returns its python and how Django got there."""
    venv.create(directory, with_pip=True)
    python = directory / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    try:
        wanted = f"Django=={importlib.metadata.version('django')}"
    except importlib.metadata.PackageNotFoundError:
        wanted = "Django"
    try:
        subprocess.run([*pip, wanted], check=True, timeout=PIP_TIMEOUT, capture_output=True)
        return python, f"pip install {wanted}"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        wheels = directory / "wheels"
        wheels.mkdir()
        for name in DJANGO_DISTRIBUTIONS:
            wheel_of_installed(name, wheels)
        subprocess.run([*pip, "--no-index", "--find-links", str(wheels), wanted], check=True, capture_output=True)
        return python, f"no index reachable: {wanted} from a wheel of the installed one (--no-index --find-links)"


def django_seconds(
    python: Path, subject: str, body: str, users: list[dict], variables: dict, repeats: int, work: Path
) -> list[float]:
    """The original's path over the same recipients: each one's context and address built, then
    subject and body compiled and rendered (bench/django_render.py)."""
    spec = {"subject": subject, "body": body, "users": users, "variables": variables, "fields": RECIPIENT_FIELDS}
    work.write_text(json.dumps(spec))
    completed = subprocess.run(
        [str(python), str(DJANGO_SCRIPT), str(work), str(repeats)], check=True, capture_output=True, text=True
    )
    return json.loads(completed.stdout)
