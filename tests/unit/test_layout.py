"""The package layout holds: the domain never imports the AWS SDK or PynamoDB.

Services under ``outgoing/`` and ``inbound/`` are given a store, a queue and a transport; only
the integration modules (the stores, the models, the transports, ``wiring``) may import boto3,
botocore or PynamoDB, or the integration modules themselves (except for type hints). Each module is
read for its imports, and imported in a fresh interpreter, so nothing another test imported hides a
dependency. (Powertools' Logger loads botocore itself; boto3 and PynamoDB must stay out.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "layers" / "common" / "python" / "dbmail"
INTEGRATION = {
    "outgoing/store.py",
    "outgoing/send_rate_store.py",
    "inbound/store.py",
    "feedback/store.py",
    "core/models.py",
    "core/transports.py",
    "core/aws.py",
    "wiring.py",
}
# The one domain module that calls AWS: settings read their secrets at cold start through it, and
# it imports the SDK inside the read, never at import (the website's settings read no secret).
READS_SECRETS = "dbmail.core.secrets"
SDK = {"boto3", "botocore", "pynamodb"}
INTEGRATION_MODULES = {"dbmail." + name.removesuffix(".py").replace("/", ".") for name in INTEGRATION}


def domain_modules() -> list[str]:
    found = []
    for folder in ("outgoing", "inbound", "feedback", "core"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            relative = f"{folder}/{path.name}"
            if relative in INTEGRATION or path.name == "__init__.py":
                continue
            found.append(f"dbmail.{folder}.{path.stem}")
    return found


def runtime_imports(module: str) -> set[str]:
    """What the module's own import statements name, leaving out ``if TYPE_CHECKING:`` blocks."""
    return runtime_imports_of(PACKAGE.parent / (module.replace(".", "/") + ".py"))


def top_level_imports(module: str) -> set[str]:
    """What the module imports when it is imported (its functions' own imports left out)."""
    tree = ast.parse((PACKAGE.parent / (module.replace(".", "/") + ".py")).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def runtime_imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def imported_sdks(module: str) -> list[str]:
    code = (
        f"import json, sys, {module}\n"
        f"print(json.dumps(sorted({{name.split('.')[0] for name in sys.modules}} & {{'boto3', 'pynamodb'}})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def test_the_domain_folders_hold_the_flow():
    # given the package, then its folders are the flow's parts and every domain module is found
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__"))
    assert folders == ["cli", "client", "core", "feedback", "inbound", "outgoing"]
    assert {
        "dbmail.outgoing.expand",
        "dbmail.outgoing.send",
        "dbmail.inbound.router",
        "dbmail.feedback.recorder",
    } <= set(domain_modules())


@pytest.mark.parametrize("module", domain_modules())
def test_a_domain_module_imports_no_aws_sdk_or_pynamodb(module):
    # given the module's own imports (the secret reader's at its top level), then none is the
    # SDK, PynamoDB or an integration module
    imports = runtime_imports(module) if module != READS_SECRETS else top_level_imports(module)
    assert {name for name in imports if name.split(".")[0] in SDK} == set()
    assert imports & INTEGRATION_MODULES == set()
    # and when it is imported alone, neither boto3 nor PynamoDB is loaded
    assert imported_sdks(module) == []


def test_an_integration_module_is_what_brings_the_sdk():
    # given the check above, it would notice an SDK import: the store does load PynamoDB
    assert "pynamodb" in imported_sdks("dbmail.outgoing.store")
    # and the secret reader's SDK is inside its read
    assert {"dbmail.core.aws", "botocore.exceptions"} <= runtime_imports(READS_SECRETS) - top_level_imports(
        READS_SECRETS
    )


# what each function's handler needs from the package (its services are built on first use)
NOT_AT_COLD_START = {
    "functions/send": {
        "dbmail.inbound.router",
        "dbmail.feedback.one_click",
        "dbmail.outgoing.expire",
        "dbmail.outgoing.expand",  # and with it the template engine: only an email rendered again needs it
        "jinja2",
    },
    "functions/inbound": {
        "dbmail.outgoing.expire",
        "dbmail.feedback.sendgrid_webhook",
        "dbmail.outgoing.archive",
        "aws_lambda_powertools.utilities.batch",  # the SQS and stream handlers' only (core/batching.py)
    },
    "functions/expire": {"dbmail.inbound.router", "dbmail.feedback.one_click", "dbmail.feedback.sendgrid_webhook"},
    "functions/unsubscribe": {"aws_lambda_powertools.utilities.batch", "dbmail.outgoing.expand", "jinja2"},
}


# and none loads boto3: botocore is the SDK (dbmail.core.aws)
for _modules in NOT_AT_COLD_START.values():
    _modules.add("boto3")


@pytest.mark.parametrize("function", sorted(NOT_AT_COLD_START))
def test_a_function_imports_only_its_own_services(function):
    # given the composition root imported as a handler imports it, with the handler's own imports
    app = PACKAGE.parents[2].parent / function / "app.py"
    handler_imports = sorted(name for name in runtime_imports_of(app) if name.startswith("dbmail."))
    code = (
        "import json, sys, importlib\n"
        f"for name in {handler_imports!r}:\n"
        "    try:\n        importlib.import_module(name)\n    except ModuleNotFoundError:\n        pass\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    # then no other function's service module is loaded at its cold start
    assert "dbmail.wiring" in loaded
    assert set(loaded) & NOT_AT_COLD_START[function] == set()


def test_a_secret_read_at_cold_start_goes_through_botocore_never_boto3():
    # given a process that reads a secret from a Secrets Manager that cannot be reached
    code = (
        "import os, sys\n"
        "os.environ.update(AWS_ACCESS_KEY_ID='x', AWS_SECRET_ACCESS_KEY='x', AWS_REGION='us-east-1',"
        " AWS_ENDPOINT_URL='http://127.0.0.1:1', AWS_MAX_ATTEMPTS='1', AWS_RETRY_MODE='standard')\n"
        "from dbmail.core import secrets\n"
        "from dbmail.core.errors import ConfigurationError\n"
        "try:\n"
        "    secrets.read_secret('DBMAIL_UNSUBSCRIBE_SECRET_ARN', 'arn:aws:secretsmanager:us-east-1:1:secret:x')\n"
        "except ConfigurationError as exc:\n"
        "    print(str(exc).split(':')[0])\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'boto3', 'botocore'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    # then the read was made (and refused, naming the variable) with botocore alone: boto3 would
    # cost every cold start about a tenth of a second
    assert result.stdout.splitlines() == ["DBMAIL_UNSUBSCRIBE_SECRET_ARN", "['botocore']"]
