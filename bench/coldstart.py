"""Cold import of each handler as Lambda does it: a fresh ``python -S -X importtime -c "import
app"`` with, on sys.path, the function's code, the layer as layers/common/Makefile builds it
(the same target sam build runs) and what Lambda's python3.12 runtime provides (boto3, botocore,
s3transfer, urllib3). Its environment is the function's own (template.yaml's), the stack's
endpoints, and Lambda's variables (LAMBDA_TASK_ROOT makes the X-Ray SDK use its Lambda sampler).
No .pyc is written (Lambda's /opt is read-only), so without the layer's own every import compiles.
The figure is importtime's cumulative time of ``app``: settings read at cold start included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path

from dbmail_local import REPO_ROOT
from dbmail_local.cfn import Template
from dbmail_local.lambda_runtime import LocalFunction, is_setting

LAYER_SOURCE = REPO_ROOT / "layers" / "common"
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "urllib3")  # Lambda's python3.12 has these


@dataclass(frozen=True)
class ImportTime:
    seconds: float
    heaviest: list[tuple[str, float]]  # the handler's direct imports, slowest first (seconds)


def build_layer(out: Path) -> Path:
    """The layer's python/ directory, built by its Makefile into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(LAYER_SOURCE), "build-CommonLayer", f"ARTIFACTS_DIR={out}"],
        check=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out / "python"


def without_bytecode(layer: Path, out: Path) -> Path:
    """A copy of the layer without its .pyc (the layer as it was before the Makefile compiled it)."""
    shutil.copytree(layer, out, ignore=shutil.ignore_patterns("__pycache__"))
    return out


def runtime_dir(out: Path) -> Path:
    """A directory holding what Lambda's runtime provides, linked from this interpreter's."""
    site = Path(sysconfig.get_paths()["purelib"])
    out.mkdir(parents=True, exist_ok=True)
    for package in RUNTIME_PROVIDED:
        link = out / package
        if not link.exists():
            link.symlink_to(site / package)
    return out


def lambda_environment(function: LocalFunction, stack_env: dict[str, str]) -> dict[str, str]:
    stack_wide = {name: value for name, value in stack_env.items() if not is_setting(name)}
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        **stack_wide,
        **function.environment,
        "LAMBDA_TASK_ROOT": str(function.code_dir),
        "AWS_LAMBDA_FUNCTION_NAME": function.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
    }


def parse_importtime(stderr: str, module: str = "app") -> ImportTime:
    """``module``'s cumulative time and its direct imports' from ``-X importtime`` output (each
    module's line follows its imports'; two spaces of indent a level)."""
    children: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name, seconds = fields[2], int(fields[1]) / 1e6
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        if depth == 0 and name.strip() == module:
            return ImportTime(seconds, sorted(children, key=lambda child: -child[1])[:3])
        if depth == 0:
            children = []
        elif depth == 1:
            children.append((name.strip(), seconds))
    raise ValueError(f"no import of {module} in the importtime output")


def import_time(function: LocalFunction, layer: Path, runtime: Path, stack_env: dict[str, str]) -> ImportTime:
    path = [str(function.code_dir), str(layer), str(runtime)]
    script = f"import sys; sys.path[:0] = {path!r}; import app"
    completed = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", script],
        cwd=function.code_dir,
        env=lambda_environment(function, stack_env),
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{function.logical_id}: import app failed: {completed.stderr.splitlines()[-1:]}")
    return parse_importtime(completed.stderr)


def handlers(template: Template) -> list[LocalFunction]:
    return [
        LocalFunction(template, logical_id, threading.Event())
        for logical_id in template.resources("AWS::Serverless::Function")
    ]
