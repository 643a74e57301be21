"""The Python MCP proxy many users run today: Starlette under uvicorn, httpx streaming the
upstream's answer through with a static bearer token added. Written for the benchmark as such
proxies are usually written (no tuning beyond an unlimited connection pool, without which httpx
caps concurrency at 100 connections and 10,000 idle streams could not be opened at all).

Environment: UPSTREAM_URL (the MCP endpoint), UPSTREAM_TOKEN.
Run: uvicorn proxy:app --host 127.0.0.1 --port PORT
"""

import os

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

UPSTREAM_URL = os.environ["UPSTREAM_URL"]
AUTHORIZATION = f"Bearer {os.environ['UPSTREAM_TOKEN']}".encode()

# Connection-scoped headers (RFC 9110 7.6.1) and the ones httpx/uvicorn set themselves.
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"host", b"content-length", b"authorization",
}

client = httpx.AsyncClient(
    # No read timeout: SSE streams stay open as long as they last.
    timeout=httpx.Timeout(10.0, read=None),
    limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
)


async def proxy(request: Request) -> StreamingResponse:
    headers = [(k, v) for k, v in request.headers.raw if k.lower() not in HOP_BY_HOP]
    headers.append((b"authorization", AUTHORIZATION))
    url = UPSTREAM_URL
    if request.url.query:
        url = f"{url}?{request.url.query}"
    upstream_request = client.build_request(
        request.method, url, headers=headers, content=await request.body()
    )
    upstream = await client.send(upstream_request, stream=True)
    response_headers = {
        k: v for k, v in upstream.headers.items() if k.lower().encode() not in HOP_BY_HOP
    }
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=response_headers,
        background=BackgroundTask(upstream.aclose),
    )


app = Starlette(routes=[Route("/mcp", proxy, methods=["GET", "POST", "DELETE"])])
