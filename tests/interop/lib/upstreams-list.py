"""A stand-in for a sidecar's GET /upstreams (the gate's test and operations override).

Usage: python3 upstreams-list.py PORT FILE
Answers GET /upstreams with FILE's content as text/plain (read on every request, so a test can
change the list between gate runs), 404 when FILE does not exist (an older sidecar), and
GET /ready with 200 and a readiness report, so the gate can also be pointed at it alone.
"""

import http.server
import pathlib
import sys

PORT, LIST = int(sys.argv[1]), pathlib.Path(sys.argv[2])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server API)
        if self.path == "/upstreams" and LIST.exists():
            self.answer(200, "text/plain; charset=utf-8", LIST.read_bytes())
        elif self.path == "/ready":
            self.answer(200, "application/json", b'{"reason":"ready","detail":"stand-in"}')
        else:
            self.answer(404, "application/json", b'{"error":"not_found"}')

    def answer(self, code, kind, body):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("upstreams-list: " + fmt % args + "\n")


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
