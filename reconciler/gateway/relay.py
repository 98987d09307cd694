"""Sending a request on and its answer back: whole, or as server-sent events chunk by chunk, counting what passed
(for the metrics, and a hosted request's evidence), and the OpenAI-style error body every refusal uses."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from reconciler.gateway.metrics import Exchange

log = logging.getLogger("reconciler.gateway")

CODE = "code"  # a response's reason code, kept on it for the metrics
_SSE = "text/event-stream"


def error(status: int, message: str, code: str, kind: str = "invalid_request_error", **headers: str) -> web.Response:
    """An OpenAI-style error body; `code` is the reason a client can act on (the status's CamelCase reason)."""
    body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    response = web.json_response(body, status=status, headers=headers)
    response[CODE] = code
    return response


def _sse_error(message: str, code: str) -> bytes:
    return f"event: error\ndata: {json.dumps({'error': {'message': message, 'type': 'upstream_error', 'code': code}})}\n\n".encode()


async def relay(request: web.Request, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str],
                body: bytes, who: str, exchange: Exchange, retry_refused: bool = False) -> web.StreamResponse:
    """POST `body` to `url` and pass the answer back; `who` names the upstream in errors (never a header's value).
    `retry_refused`: a refused connection (nothing was sent) is raised for the caller to try again."""
    exchange.bytes_out = len(body)
    try:
        # A redirect is answered, not followed: it would send the body (to a provider, the key) where no route says
        upstream = await session.post(url, data=body, headers=headers, allow_redirects=False)
    except (aiohttp.ClientError, asyncio.TimeoutError) as problem:
        if retry_refused and isinstance(problem, aiohttp.ClientConnectorError):
            raise
        return error(502, f"{who}: {problem or type(problem).__name__}", "UpstreamUnreachable", "upstream_error")
    try:
        exchange.status = upstream.status
        content_type = upstream.headers.get("Content-Type", "application/json")
        if not content_type.startswith(_SSE):
            answer = await upstream.read()
            exchange.received(len(answer))
            return web.Response(status=upstream.status, body=answer, headers={"Content-Type": content_type})
        return await _stream(request, upstream, who, exchange)
    finally:
        upstream.close()  # a stream cut short closes the connection: the engine sees the client gone


class _EventStream(web.StreamResponse):
    """Its headers leave with its first write (as a whole web.Response's do), not alone at prepare()."""

    _send_headers_immediately = False  # aiohttp's switch for that (its Response sets it); older versions ignore it


async def _stream(request: web.Request, upstream: aiohttp.ClientResponse, who: str, exchange: Exchange
                  ) -> web.StreamResponse:
    """Whatever has come from the engine is written at once, never held for more; the headers go with the first
    event, and the last events with the stream's end. Each write wakes the client (and, on loopback, costs about a
    context switch): the headers alone would cost one more before the first token."""
    response = _EventStream(status=upstream.status, headers={
        "Content-Type": upstream.headers["Content-Type"], "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        while True:
            chunk = await upstream.content.readany()  # what has come, at once; b"" only at the end
            if chunk:
                exchange.received(len(chunk))
            if upstream.content.at_eof():
                await response.write_eof(chunk)
                return response
            await response.write(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as problem:
        message = f"{who} ended the stream early: {problem or type(problem).__name__}"
        log.warning("%s", message)
        response[CODE] = "UpstreamFailed"
        await response.write_eof(_sse_error(message, "UpstreamFailed"))
        return response
