"""Chaos: server-everything SIGKILLed and restarted N times under one live Python SDK client
session through the sidecar (the sidecar is already running in front of UPSTREAM_PORT).

    python upstream_restarts.py SIDECAR_MCP_URL UPSTREAM_PORT RESTARTS

The Python twin of upstream-restarts.mjs (same figures, same JSON line). After each restart has
completed (the new server accepts connections) it counts, on the same client session:
  - failed tool calls: 3 `echo` calls, each must answer its own text;
  - lost stream notifications: `toggle-simulated-logging` starts server-sent log messages (every
    5 s, at level debug) that reach the client only over its standalone GET stream; a restart
    after which none arrives within 12 s counts as lost.
stdout: progress lines, then one JSON line {"result":{...}}. Exit 0 when the run completed (the
figures are judged by the caller), 1 when it could not.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

INTEROP = Path(__file__).resolve().parent.parent / "interop"
EVERYTHING = INTEROP / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"


def fail(message, server=None):
    print(f"FAIL {message}", flush=True)
    if server is not None and server.poll() is None:
        server.kill()
    sys.exit(1)


def start_server(port):
    return subprocess.Popen(
        ["node", "--require", str(INTEROP / "lib/loopback.cjs"), str(EVERYTHING), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def until(what, check, seconds=30, server=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(check):
                return
        except Exception:
            pass  # not yet
        await asyncio.sleep(0.05)
    fail(f"{what} did not happen within {seconds} s", server)


def ready(url):
    ready_url = url.rsplit("/", 1)[0] + "/ready"
    with urllib.request.urlopen(ready_url, timeout=2) as response:
        return response.status == 200


def listening(port):
    try:
        return accepting(port)
    except OSError:
        return False


def accepting(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


async def main():
    if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
        print("usage: python upstream_restarts.py SIDECAR_MCP_URL UPSTREAM_PORT RESTARTS", file=sys.stderr)
        sys.exit(2)
    url, port, restarts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    figures = {
        "restarts": 0,
        "calls_after_restart": 0,
        "failed_calls_after_restart": 0,
        "stream_windows": 0,
        "stream_windows_lost": 0,
        "first_call_ms": [],
    }
    logged = 0

    async def on_log(params):
        nonlocal logged
        logged += 1

    # A server left on the port by an earlier client's run must be gone first.
    await until(f"port {port} free", lambda: not listening(port), 30)
    server = start_server(port)
    await until("server-everything accepting connections", lambda: accepting(port), 30, server)
    await until("the sidecar turning ready", lambda: ready(url), 60, server)
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write, logging_callback=on_log) as session:
            await session.initialize()
            await session.set_logging_level("debug")

            async def call(message):
                try:
                    result = await asyncio.wait_for(session.call_tool("echo", {"message": message}), 10)
                    return not result.is_error and result.content[0].text == f"Echo: {message}"
                except Exception:
                    return False

            for i in range(1, restarts + 1):
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
                server = start_server(port)
                await until(f"server-everything #{i + 1} accepting connections", lambda: accepting(port), 30, server)
                figures["restarts"] += 1

                for c in range(3):
                    started = time.monotonic()
                    ok = await call(f"restart-{i}-{c}")
                    if c == 0:
                        figures["first_call_ms"].append(round((time.monotonic() - started) * 1000))
                    figures["calls_after_restart"] += 1
                    if not ok:
                        figures["failed_calls_after_restart"] += 1

                # The logging toggle is per upstream session: the restarted server knows none.
                before = logged
                figures["stream_windows"] += 1
                try:
                    await asyncio.wait_for(session.call_tool("toggle-simulated-logging", {}), 10)
                except Exception:
                    pass  # no toggle, no notification: counted as lost below
                deadline = time.monotonic() + 12
                while logged == before and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                if logged == before:
                    figures["stream_windows_lost"] += 1
                print(
                    f"restart {i}: calls failed so far {figures['failed_calls_after_restart']}, "
                    f"stream windows lost {figures['stream_windows_lost']}",
                    flush=True,
                )
    ms = sorted(figures["first_call_ms"])
    figures["first_call_ms"] = {"p50": ms[len(ms) // 2], "max": ms[-1]}
    print(json.dumps({"result": figures}), flush=True)
    os.killpg(server.pid, signal.SIGTERM)


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), 60 + int(sys.argv[3] if sys.argv[3:] else 1) * 45))
    except asyncio.TimeoutError:
        fail("overall deadline passed")
