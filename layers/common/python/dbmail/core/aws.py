"""AWS clients from botocore alone.

boto3 adds resources and S3's transfer manager, neither of which dbmail uses, and importing it
(its compat module loads s3transfer) costs every cold start about a tenth of a second. Each
client comes from its own botocore session, as ``boto3.client`` makes it: a session is not safe
to share between threads, a client is.
"""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.config import Config

# Connections a client keeps open. A Lambda container runs one invocation, with up to 10 calls in
# flight (the send function's deliveries); the local runner runs up to 4 invocations of a
# function in one process, sharing its clients (wiring caches them), so 40. A call that finds the
# pool full opens a connection of its own and closes it after: a TCP connect per call.
POOL_CONNECTIONS = 40
# A fixed User-Agent: botocore otherwise builds its telemetry one twice per request, about 0.1 ms
# of CPU each time (a send makes one SES call per email).
USER_AGENT = "dbmail"


def client(service: str, region: str | None, **options: Any) -> Any:
    """A client for ``service`` in ``region``; ``options`` as botocore's ``create_client`` takes
    them (``endpoint_url``, ``config``: merged over POOL_CONNECTIONS and USER_AGENT). Credentials and endpoints
    come from the environment."""
    session = botocore.session.Session()
    session.set_default_client_config(Config(max_pool_connections=POOL_CONNECTIONS, user_agent=USER_AGENT))
    return session.create_client(service, region_name=region, **options)
