"""tests/sglang_server.py's start-up, without SGLang: a server whose HTTP port was taken at bind (the
log's bind error) is started again on another port."""

from __future__ import annotations

import sys

from sglang_server import CpuServer

# Fails to bind on the first port it is given (the bind error uvicorn logs), answers /health on the next.
_FAKE_SERVER = r"""
import http.server, sys, time
port, first = int(sys.argv[1]), sys.argv[2]
if port == int(first):
    print("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', %d)" % port)
    sys.stdout.flush()
    time.sleep(600)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


class _FakeServer(CpuServer):
    first_port = 0

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-c", _FAKE_SERVER, str(self.port), str(self.first_port)]


def test_a_port_taken_at_bind_starts_the_server_again_on_another(tmp_path):
    server = _FakeServer("fake", tmp_path, plugins="__none__", speculative=False, startup_timeout=60)
    server.first_port = first = server.port
    with server:
        assert server.port != first
        assert server.startup_seconds is not None and server.startup_seconds < 30
    assert server.process is None
