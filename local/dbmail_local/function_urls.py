"""Lambda function URLs on loopback: the runner's stand-in for each function's FunctionUrlConfig.

``up`` picks a free port for every function with a FunctionUrlConfig and writes its URL to
stack.env as ``DBMAIL_LOCAL_<LOGICALID>_URL`` (``http://127.0.0.1:<port>/``, with the trailing
slash of Lambda's URLs); ``!GetAtt <Function>Url.FunctionUrl`` resolves to it (cfn.py), so
the send function's unsubscribe links point at the local unsubscribe function.

Each URL is served by a ThreadingHTTPServer that turns a request into the function URL event
(payload format 2.0: ``rawPath``, ``rawQueryString``, lower-cased ``headers`` with repeated ones
joined by commas, ``cookies``, ``queryStringParameters``, ``requestContext.http`` with method,
path, protocol, sourceIp and userAgent, ``body`` base64-encoded unless it is text, and
``isBase64Encoded``) and the handler's answer back into HTTP as Lambda does: a dict with a
``statusCode`` gives status, ``headers``, ``cookies`` (Set-Cookie) and ``body`` (decoded when
``isBase64Encoded``); any other answer is 200 application/json of it; a failed invocation is 502.
A request body over 6 MB (Lambda's limit) is 413. Only AuthType NONE is served (AWS_IAM would
need SigV4 checks the runner does not make); invocations of one function run one at a time, as
in one Lambda execution environment (Powertools' resolvers keep the current event on the app).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .cfn import Template, TemplateError
from .lambda_runtime import LocalFunction

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_REQUEST_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
_TEXT_TYPES = ("application/json", "application/javascript", "application/xml", "application/x-www-form-urlencoded")


def url_variable(logical_id: str) -> str:
    """The stack.env variable holding the function's local URL."""
    return f"DBMAIL_LOCAL_{logical_id.upper()}_URL"


def local_urls(template: Template, ports: Mapping[str, int]) -> dict[str, str]:
    """The URL of each function with a FunctionUrlConfig, by logical id, on the given ports."""
    return {logical_id: f"http://{HOST}:{ports[logical_id]}/" for logical_id in template.url_functions()}


def urls_from_env(template: Template, env: Mapping[str, str]) -> dict[str, str]:
    """The function URLs a stack.env names, for the template's functions with a FunctionUrlConfig."""
    return {
        logical_id: env[url_variable(logical_id)]
        for logical_id in template.url_functions()
        if url_variable(logical_id) in env
    }


def is_text(content_type: str | None) -> bool:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith(("+json", "+xml"))


def request_event(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str, domain: str
) -> dict[str, Any]:
    """The function URL event (payload format 2.0) of one HTTP request."""
    path, _, query = target.partition("?")
    lowered: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies += [cookie.strip() for cookie in value.split(";") if cookie.strip()]
            continue
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    now = datetime.now(UTC)
    url_id = domain.split(".", 1)[0]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path or "/",
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": url_id,
            "domainName": domain,
            "domainPrefix": url_id,
            "http": {
                "method": method,
                "path": path or "/",
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        parameters: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
        event["queryStringParameters"] = parameters
    if body:
        text = None
        if is_text(lowered.get("content-type")):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        event["body"] = text if text is not None else base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = text is None
    return event


def http_response(response: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body for the handler's answer, by Lambda's function URL rules."""
    if not isinstance(response, dict) or "statusCode" not in response:
        return 200, [("Content-Type", "application/json")], json.dumps(response).encode()
    status = int(response["statusCode"])
    headers = [(str(name), str(value)) for name, value in (response.get("headers") or {}).items()]
    for name, values in (response.get("multiValueHeaders") or {}).items():  # not in 2.0; tolerated
        headers += [(str(name), str(value)) for value in values]
    headers += [("Set-Cookie", str(cookie)) for cookie in response.get("cookies") or []]
    body = response.get("body") or ""
    if not isinstance(body, str):
        body = json.dumps(body)
    data = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode("utf-8")
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return status, headers, data


class FunctionUrlServer:
    """One function's URL: an HTTP server on loopback that invokes it per request."""

    def __init__(self, function: LocalFunction, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname != HOST or not parts.port:
            raise TemplateError(f"{function.logical_id}: {url} is not a loopback http URL the runner can serve")
        self.function = function
        self.url = url
        self.name = f"{function.logical_id}Url"
        self._lock = threading.Lock()  # one invocation at a time, as in one execution environment
        self._server = ThreadingHTTPServer((HOST, parts.port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("function URL listening", extra={"function": self.function.logical_id, "url": self.url})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def invoke(self, event: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            invocation = self.function.invoke(event)
        if invocation.error is not None:
            return 502, [("Content-Type", "application/json")], b'{"Message":"Internal Server Error"}'
        try:
            return http_response(invocation.response)
        except (TypeError, ValueError) as error:
            log.error(
                "function URL response malformed", extra={"function": self.function.logical_id, "error": str(error)}
            )
            return 502, [("Content-Type", "application/json")], b'{"Message":"Internal Server Error"}'

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "dbmail-local-function-url"

            def _handle(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_REQUEST_BYTES:
                    self._send(413, [("Content-Type", "application/json")], b'{"Message":"Request Too Long"}')
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else b""
                host = self.headers.get("Host") or f"{HOST}:{self.server.server_address[1]}"
                event = request_event(
                    self.command, self.path, list(self.headers.items()), body, self.client_address[0], host
                )
                status, headers, data = server.invoke(event)
                self._send(status, headers, data)
                log.info(
                    "function URL request",
                    extra={
                        "function": server.function.logical_id,
                        "method": self.command,
                        "status": status,
                        "ms": round((time.monotonic() - started) * 1000, 1),
                    },
                )

            def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # each request is logged once, above, without its path (tokens are credentials)

        return Handler


def url_servers(template: Template, functions: list[LocalFunction]) -> list[FunctionUrlServer]:
    """A server for each loaded function with a FunctionUrlConfig whose URL is local; others are logged."""
    servers = []
    by_id = {function.logical_id: function for function in functions}
    for logical_id in template.url_functions():
        config = template.resolve(template.properties(logical_id)["FunctionUrlConfig"])
        fields = {"function": logical_id}
        if logical_id not in by_id:
            continue  # left out already (its handler did not load), and logged then
        if config.get("AuthType") != "NONE":
            log.warning("function URL left out: only AuthType NONE is served locally", extra=fields)
            continue
        try:
            servers.append(FunctionUrlServer(by_id[logical_id], template.function_url(logical_id)))
        except (TemplateError, OSError) as error:
            log.error("function URL left out", extra={**fields, "error": str(error)})
    return servers
