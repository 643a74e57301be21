"""Scenario G-PY: the MCP Python SDK's stdio_client spawns `mcp-sidecar stdio` in front of
server-everything (Streamable HTTP) and runs its feature set through it:

    python stdio_py.py SIDECAR_BIN UPSTREAM_URL STATE_DIR

  - tools: tools/list, echo;
  - a long-running tool whose progress arrives before its result;
  - resources: subscribe to one, start server-everything's simulated updates, and receive a
    notifications/resources/updated for it;
  - sampling/createMessage and elicitation/create sent by server-everything's tools (server to
    client, through the sidecar) and answered by this client, the answers in the tool results;
  - roots/list asked by the server and answered.

stdout: `ok ...` lines, then `ok all checks passed`; exit 1 with a `FAIL ...` line otherwise.
"""

import asyncio
import sys
import time

from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

SAMPLED = "sampled-by-the-python-client"
ELICITED = "Ada Lovelace (python client)"
ROOT = "file:///interop-stdio-py"


def fail(message):
    print(f"FAIL {message}", flush=True)
    sys.exit(1)


def ok(message):
    print(f"ok   {message}", flush=True)


def text_of(result):
    return " ".join(getattr(c, "text", "") for c in getattr(result, "content", []) or [])


async def until(check, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def main(bin_path, upstream, state_dir):
    updated = []
    asked = {"sampling": 0, "elicitation": 0, "roots": 0}

    async def on_message(message):
        notification = getattr(message, "root", message)
        if isinstance(notification, types.ResourceUpdatedNotification):
            updated.append(str(notification.params.uri))

    async def on_sampling(_context, params):
        asked["sampling"] += 1
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLED),
            model="interop-python",
            stop_reason="endTurn",
        )

    async def on_elicitation(_context, params):
        asked["elicitation"] += 1
        return types.ElicitResult(action="accept", content={"name": ELICITED, "check": True})

    async def on_roots(_context):
        asked["roots"] += 1
        return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="interop")])

    server = StdioServerParameters(
        command=bin_path,
        args=["stdio"],
        env={
            "MCP_SIDECAR_UPSTREAM_URL": upstream,
            "MCP_SIDECAR_AUTH": "none",
            "MCP_SIDECAR_STATE_DIR": state_dir,
            "MCP_SIDECAR_LOG": "debug",
        },
    )
    async with stdio_client(server) as (read, write):
        async with ClientSession(
            read,
            write,
            sampling_callback=on_sampling,
            elicitation_callback=on_elicitation,
            list_roots_callback=on_roots,
            message_handler=on_message,
        ) as session:
            init = await session.initialize()
            ok(f"initialize over stdio: server {init.server_info.name} {init.server_info.version}")

            names = [t.name for t in (await session.list_tools()).tools]
            for want in [
                "echo",
                "trigger-long-running-operation",
                "trigger-sampling-request",
                "trigger-elicitation-request",
                "toggle-subscriber-updates",
            ]:
                if want not in names:
                    fail(f"tools/list: no {want} in {names}")
            ok(f"tools/list: {len(names)} tools")

            echoed = text_of(await session.call_tool("echo", {"message": "python"}))
            if echoed != "Echo: python":
                fail(f"echo: {echoed!r}")
            ok(f"tools/call echo: {echoed!r}")

            events = []

            async def on_progress(progress, total, _message):
                events.append(f"progress {progress:g}/{total:g}")

            result = await session.call_tool(
                "trigger-long-running-operation",
                {"duration": 2, "steps": 2},
                progress_callback=on_progress,
            )
            events.append("result")
            if "Long running operation completed" not in text_of(result):
                fail(f"long-running: {text_of(result)!r}")
            if events[:2] != ["progress 1/2", "progress 2/2"]:
                fail(f"long-running: expected two progress notifications before the result: {events}")
            ok(f"long-running tool: {events}")

            resources = (await session.list_resources()).resources
            if not resources:
                fail("resources/list is empty")
            uri = str(resources[0].uri)
            await session.subscribe_resource(uri)
            toggled = text_of(await session.call_tool("toggle-subscriber-updates", {}))
            if not await until(lambda: uri in updated, 20):
                fail(f"no notifications/resources/updated for {uri} (toggle said {toggled!r})")
            ok(f"resources/subscribe {uri}: notifications/resources/updated arrived")

            sampled = text_of(await session.call_tool("trigger-sampling-request", {"prompt": "hello"}))
            if asked["sampling"] != 1 or SAMPLED not in sampled:
                fail(f"sampling: asked {asked['sampling']} times, tool said {sampled[:300]!r}")
            ok("sampling/createMessage from the server answered by the client; the tool returned the answer")

            elicited = text_of(await session.call_tool("trigger-elicitation-request", {}))
            if asked["elicitation"] != 1 or ELICITED not in elicited:
                fail(f"elicitation: asked {asked['elicitation']} times, tool said {elicited[:300]!r}")
            ok("elicitation/create from the server answered by the client; the tool returned the answer")

            if not await until(lambda: asked["roots"] > 0, 20):
                fail("server-everything never asked for roots/list")
            listed = text_of(await session.call_tool("get-roots-list", {})) if "get-roots-list" in names else ROOT
            if ROOT not in listed:
                fail(f"get-roots-list: {listed[:300]!r}")
            ok("roots/list from the server answered by the client")
    ok("all checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: python stdio_py.py SIDECAR_BIN UPSTREAM_URL STATE_DIR", file=sys.stderr)
        sys.exit(2)
    try:
        asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), 90))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - any failure is the test's
        fail(f"{type(e).__name__}: {e}")
