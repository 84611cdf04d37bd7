"""AWS clients from botocore alone.

boto3 adds resources and S3's transfer manager, neither of which dbmail uses, and importing it
(its compat module loads s3transfer) costs every cold start about a tenth of a second. Each
client comes from its own botocore session, as ``boto3.client`` makes it: a session is not safe
to share between threads, a client is.
"""

from __future__ import annotations

from typing import Any

import botocore.session


def client(service: str, region: str | None, **options: Any) -> Any:
    """A client for ``service`` in ``region``; ``options`` as botocore's ``create_client`` takes
    them (``endpoint_url``, ``config``). Credentials and endpoints come from the environment."""
    return botocore.session.Session().create_client(service, region_name=region, **options)
