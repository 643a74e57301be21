"""A stand-in for a sidecar with a device-code login pending: /ready answers 503 with reason
auth_required and a `login` object (the shape src/readiness.rs serializes) until READY_AFTER
seconds have passed, then 200. Usage: python3 fake_ready.py PORT READY_AFTER"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, READY_AFTER = int(sys.argv[1]), float(sys.argv[2])
STARTED = time.monotonic()
SINCE = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/ready":
            self.send_response(404)
            self.end_headers()
            return
        if time.monotonic() - STARTED < READY_AFTER:
            status, body = 503, {
                "ready": False,
                "reason": "auth_required",
                "detail": 'waiting for the user to sign in ("device code")',
                "since": SINCE,
                "login": {
                    "verification_uri": "https://idp.example/device",
                    "user_code": "WDJB-MJHT",
                    "expires_at": "2026-11-22T06:00:00Z",
                },
            }
        else:
            status, body = 200, {"ready": True, "reason": "ready", "detail": "signed in", "since": SINCE}
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
