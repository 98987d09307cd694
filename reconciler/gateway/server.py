"""The gateway's HTTP server: OpenAI-compatible paths forwarded to a Model's Ready workloads, or an error that says
why not (the serving workload's reason). Streams pass through chunk by chunk; a client that goes away cancels its
handler (aiohttp's handler cancellation), which closes the upstream connection, and the engine stops generating."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from reconciler.gateway.admission import admit_containers
from reconciler.gateway.demand import DemandBook, OnDemandRequests, QueueFull
from reconciler.gateway.hosted import CLIENT_GONE, HostedEvidence, forward_hosted
from reconciler.gateway.metrics import Exchange, GatewayMetrics
from reconciler.gateway.relay import CODE, error, relay
from reconciler.gateway.routes import Backend, HostedRoute, RouteState
from reconciler.gateway.routes_file import RoutesFile
from reconciler.gateway.spool import demand_dir, hosted_dir
from reconciler.gateway.upstream import FORWARDED_HEADERS, Balancer, client_session

log = logging.getLogger("reconciler.gateway")

MAX_BODY_BYTES = 8 * 1024 * 1024  # a long chat history fits; a runaway upload is refused before it is held
RETRY_AFTER_SECONDS = 5
_SAFE_TAIL = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*")  # no '..', no encoded tricks, no empty segment
_SHOWN = 80  # a model name quoted back is cut here: the error is for a human, not an echo chamber

ROUTES_KEY = web.AppKey("routes", RoutesFile)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
BALANCER_KEY = web.AppKey("balancer", Balancer)
WAIT_KEY = web.AppKey("wait", float)
BODY_SECONDS_KEY = web.AppKey("body_seconds", float)
IN_FLIGHT_KEY: web.AppKey["InFlight"] = web.AppKey("in_flight")
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
EVIDENCE_KEY = web.AppKey("evidence", HostedEvidence)
ON_DEMAND_KEY = web.AppKey("on_demand", OnDemandRequests)


async def health(request: web.Request) -> web.Response:
    routes = request.app[ROUTES_KEY]
    routes.current()
    return web.json_response({"status": "ok", "routes": routes.problem or "read"})


async def list_models(request: web.Request) -> web.Response:
    table = request.app[ROUTES_KEY].current()
    named = [(name, name) for name in table.models] + list(table.aliases.items())
    return web.json_response({"object": "list", "data": [
        {"id": asked, "object": "model", "owned_by": "reconciler", "state": table.models[name].state.value,
         **({"reason": table.models[name].reason} if table.models[name].reason else {}),
         **({"aliasOf": name} if asked != name else {})}
        for asked, name in named if name in table.models]})


class InFlight:
    """Requests being served (read, waited for, relayed); past the cap one is refused at once, which with the body
    limit bounds what the gateway holds."""

    def __init__(self, cap: int) -> None:
        self.cap, self.count = cap, 0

    @contextmanager
    def admit(self) -> Iterator[bool]:
        if self.count >= self.cap:
            yield False
            return
        self.count += 1
        try:
            yield True
        finally:
            self.count -= 1


async def forward(request: web.Request) -> web.StreamResponse:
    exchange = Exchange(monotonic())
    status, reason = CLIENT_GONE, "ClientGone"
    try:
        response = await _admitted(request, exchange)
        status, reason = response.status, response.get(CODE)
        return response
    finally:
        request.app[METRICS_KEY].observe(exchange, status, reason, monotonic())


async def metrics(request: web.Request) -> web.Response:
    text, content_type = request.app[METRICS_KEY].exposition()
    return web.Response(body=text, headers={"Content-Type": content_type})


async def _admitted(request: web.Request, exchange: Exchange) -> web.StreamResponse:
    in_flight = request.app[IN_FLIGHT_KEY]
    with in_flight.admit() as admitted:
        if not admitted:
            return error(503, f"{in_flight.cap} requests are in flight here: try again shortly", "GatewayBusy",
                         "server_busy", **{"Retry-After": "1"})
        return await _forward(request, exchange)


async def _forward(request: web.Request, exchange: Exchange) -> web.StreamResponse:
    tail = request.match_info["tail"]
    if not _SAFE_TAIL.fullmatch(tail) or ".." in tail.split("/"):
        return error(404, f"no such path: {request.raw_path[:_SHOWN]!r}", "NotFound")
    try:
        async with asyncio.timeout(request.app[BODY_SECONDS_KEY]):  # wait_for would start a task per request
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"the request body is over {MAX_BODY_BYTES} bytes", "RequestTooLarge")
    except asyncio.TimeoutError:  # a client that trickles its body would hold one of the --max-requests places
        return error(408, f"the request body did not arrive within {request.app[BODY_SECONDS_KEY]:g} s", "RequestTimeout")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as problem:
        return error(400, f"the request body is not JSON: {problem}", "InvalidJSON")
    model = payload.get("model") if isinstance(payload, dict) else None
    if not isinstance(model, str) or not model:
        return error(400, "the request names no model: set \"model\" to a Model's name (GET /v1/models lists them)",
                     "ModelRequired")
    table = request.app[ROUTES_KEY].current()
    route = table.models.get(table.aliases.get(model, model)) if model not in table.ambiguous else None
    if route is not None:  # a refusal before a backend is chosen (queue full, still starting) counts by its Model
        exchange.model = table.aliases.get(model, model)
    if route is None or route.on_demand is None:
        return await _route_and_relay(request, model, payload, tail, body, request.app[WAIT_KEY], exchange, False)
    on_demand = route.on_demand
    try:
        async with request.app[ON_DEMAND_KEY].serving(on_demand.workload, model, on_demand.concurrency,
                                                      on_demand.queue_depth):
            wait = min(request.app[WAIT_KEY], on_demand.startup_seconds)
            return await _route_and_relay(request, model, payload, tail, body, wait, exchange, True)
    except QueueFull as full:
        return error(429, f"model {model[:_SHOWN]!r}: Workload/{on_demand.workload}: {full}: try again shortly",
                     "QueueFull", "rate_limit_exceeded", **{"Retry-After": "1"})


async def _route_and_relay(request: web.Request, model: str, payload: dict[str, Any], tail: str, body: bytes,
                           wait: float, exchange: Exchange, on_demand: bool) -> web.StreamResponse:
    """`on_demand`: a backend that refuses the connection is being stopped (idle, or evicted for another model) while
    the routes still show it: the request waits for the next start instead, within the same bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        chosen = await _backend(request.app, model, deadline)
        if isinstance(chosen, web.Response):
            return chosen
        target, exchange.model = chosen
        if isinstance(target, HostedRoute):
            return await forward_hosted(request, request.app[SESSION_KEY], request.app[EVIDENCE_KEY], target, tail,
                                        payload, exchange)
        # asked by an alias: the engine serves the Model's name only
        sent = body if exchange.model == model else json.dumps({**payload, "model": exchange.model}).encode()
        exchange.route = f"Workload/{target.workload}"
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        headers["Content-Type"] = "application/json"
        try:
            with request.app[BALANCER_KEY].holding(target):
                return await relay(request, request.app[SESSION_KEY], f"{target.url}/{tail}", headers, sent,
                                   f"Workload/{target.workload} at {target.url}", exchange,
                                   retry_refused=on_demand and loop.time() < deadline)
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.2)


async def _backend(app: web.Application, model: str, deadline: float
                   ) -> tuple[Backend | HostedRoute, str] | web.Response:
    """A Ready backend of `model` (or its hosted route) and the Model's name; one that is starting (or idle, on
    demand) is waited for, up to the deadline."""
    loop = asyncio.get_running_loop()
    shown = model[:_SHOWN]
    while True:
        table = app[ROUTES_KEY].current()
        if model in table.ambiguous:
            declaring = ", ".join(f"Model/{name}" for name in table.ambiguous[model])
            return error(400, f"model {shown!r} is an alias of {declaring}: ask for one by name", "AmbiguousModel")
        name = table.aliases.get(model, model)
        route = table.models.get(name)
        if route is None:
            known = ", ".join([*table.models, *table.aliases]) or "none"
            return error(404, f"model {shown!r} is not served here (models: {known})", "ModelNotFound")
        if route.backends:
            return app[BALANCER_KEY].pick(route.backends), name
        if route.hosted:
            return route.hosted, name
        about = f"model {shown!r}: Workload/{route.workload}: " if route.workload else f"model {shown!r}: "
        if route.state is RouteState.unavailable:
            return error(503, f"{about}{route.reason}: {route.message}", route.reason, "model_unavailable")
        if loop.time() >= deadline:
            return error(503, f"{about}still starting ({route.reason}: {route.message})", route.reason,
                         "model_starting", **{"Retry-After": str(RETRY_AFTER_SECONDS)})
        await asyncio.sleep(0.2)


@web.middleware
async def openai_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, wrong method) in the same shape as the gateway's."""
    try:
        return await handler(request)
    except web.HTTPException as refused:
        if refused.status < 400:
            raise
        return error(refused.status, f"{request.method} {request.path[:_SHOWN]}: {refused.reason}", refused.reason.replace(" ", ""))


def make_app(routes_file: Path, wait_seconds: float, max_requests: int, body_seconds: float,
             container_host: str | None = None) -> web.Application:
    routes = RoutesFile(routes_file)
    containers = [admit_containers(container_host, routes.current, lambda why: error(
        403, why, "ContainerNotAllowed", "permission_error"))] if container_host else []
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[openai_errors, *containers])
    app[ROUTES_KEY] = routes
    app[IN_FLIGHT_KEY] = InFlight(max_requests)
    app[BALANCER_KEY] = Balancer()
    app[WAIT_KEY] = wait_seconds
    app[BODY_SECONDS_KEY] = body_seconds
    app[METRICS_KEY] = GatewayMetrics()
    app[EVIDENCE_KEY] = HostedEvidence(hosted_dir(routes_file.parent.parent))
    app[ON_DEMAND_KEY] = OnDemandRequests(DemandBook(demand_dir(routes_file.parent.parent)))

    async def session(app: web.Application) -> Any:
        app[SESSION_KEY] = client_session()
        app[ON_DEMAND_KEY].book.adopt()
        yield
        await app[SESSION_KEY].close()
        app[ON_DEMAND_KEY].book.close()

    app.cleanup_ctx.append(session)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/{tail:.+}", forward)  # chat/completions, completions, embeddings and the rest alike
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reconciler-gateway", description=__doc__, allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--container-host", help="the host's address on the container bridge, where it also listens "
                                                 "for the containers the routes file admits")
    parser.add_argument("--routes", type=Path, required=True, help="the routes file the reconciler writes")
    parser.add_argument("--body-seconds", type=_bounded(float, 0.1, 600), default=30.0,
                        help="how long a request's body may take to arrive before a 408")
    parser.add_argument("--wait-seconds", type=_bounded(float, 0, 600), default=30.0,
                        help="how long a request for a model still starting waits before a 503 with Retry-After")
    parser.add_argument("--max-requests", type=_bounded(int, 1, 4096), default=256,
                        help="requests served at once (waiting, streaming); more are refused with 503 GatewayBusy")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    hosts = [options.host, *([options.container_host] if options.container_host else [])]
    web.run_app(make_app(options.routes, options.wait_seconds, options.max_requests, options.body_seconds,
                         options.container_host),
                host=hosts, port=options.port,
                handler_cancellation=True, access_log=None, print=lambda text: log.info("%s", text.strip()),
                loop=uvloop.new_event_loop())  # its loop and transports in C: a fifth less time to first token


def _bounded(kind: type, low: float, high: float) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not within {low}..{high}")
        return value
    return parse
