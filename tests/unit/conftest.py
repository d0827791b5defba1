"""Fixtures shared by the unit tests."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def serve_text() -> Iterator[Callable[[str], tuple[int, list[str]]]]:
    """Start a loopback HTTP server answering every GET with the given text.

    Returns a function ``serve(body) -> (port, paths requested so far)``; servers stop at teardown.
    """
    servers: list[http.server.HTTPServer] = []

    def serve(text: str) -> tuple[int, list[str]]:
        hits: list[str] = []
        body = text.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_port, hits

    yield serve
    for srv in servers:
        srv.shutdown()
