"""Fixtures shared by the unit tests (the moto stack itself is in tests/conftest.py)."""

import os
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dbmail.client import install_default_email_lists, publish_directory, set_plain_redirect
from tests.conftest import DIRECTORY


@pytest.fixture(autouse=True)
def hermetic_environment(tmp_path, monkeypatch):
    """No test meets a developer's `make up`: the CLI reads `.local/stack.env` of the working
    directory into os.environ, so each test runs in its own empty directory, and whatever it
    leaves in os.environ goes with it."""
    monkeypatch.chdir(tmp_path)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def inbound(moto_stack):
    """The moto stack with the original's default rules, the sample directory and a directors redirect."""
    install_default_email_lists()
    publish_directory(**DIRECTORY)
    set_plain_redirect("directors", "dir1@example.net, Dir Two <dir2@example.net>")
    return moto_stack


class _Hostile(BaseHTTPRequestHandler):
    """Reads the request, then misbehaves as ``server.behaviour`` says: what a real server or
    network can do and pytest-httpserver cannot."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path, list(self.headers.items()), body))
        behaviour = self.server.behaviour
        if behaviour == "hang":  # accept, read, never answer
            self.server.release.wait(10)
        elif behaviour == "truncate":  # promise 1000 bytes, send 9, hang up
            self.send_response(202)
            self.send_header("X-Message-Id", "sg-1")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"truncated")
        elif behaviour == "reset":  # abort the connection: the client reads an RST
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        elif behaviour == "garble":  # not HTTP at all
            self.wfile.write(b"SMTP ready\r\n\r\n")
        elif behaviour in ("keep", "idle-close"):  # a good answer on a kept-alive connection
            self.send_response(202)
            self.send_header("X-Message-Id", f"sg-{len(self.server.requests)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.wfile.flush()
            # "idle-close": then the server drops it, as one does an idle connection, unannounced
            self.close_connection = behaviour == "idle-close"
            return
        # "close": no answer at all; for every behaviour the connection is then closed
        self.close_connection = True

    def setup(self):
        super().setup()
        self.server.connections += 1


@pytest.fixture
def hostile():
    """Start a hostile server with the given behaviour (hang, truncate, reset, garble, close; or
    keep, idle-close: a good answer on a connection kept alive, or dropped after it); returns its
    base URL. ``hostile.requests`` holds (method, path, headers, body) of each request, and
    ``hostile.servers`` the servers (their ``connections``: TCP connections accepted)."""
    servers, requests = [], []

    def start(behaviour):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
        server.daemon_threads = True
        server.behaviour, server.release, server.requests = behaviour, threading.Event(), requests
        server.connections = 0  # TCP connections accepted
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    start.requests, start.servers = requests, servers
    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()
