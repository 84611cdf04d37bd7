"""The dbmail local stack: DynamoDB Local, a moto server and a runner that plays Lambda.

Everything is derived from template.yaml, so the local stack cannot drift from what deploys.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_PARAMETERS = REPO_ROOT / "local" / "parameters.json"
