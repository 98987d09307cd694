"""Who may call the gateway on its container-bridge address: only a container that declared it uses this gateway
(spec.uses), known by the address the reconciler saw it get, and only for the models that use names. Loopback
clients are not judged here: the host's own users reach it as before."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from reconciler.gateway.routes import RouteTable


def admit_containers(container_host: str, routes: Callable[[], RouteTable],
                     refuse: Callable[[str], web.Response]) -> Any:
    """A middleware that judges each request that came in on `container_host` before anything else is read or
    waited for; a container limited to some models is judged again by the model its body names, and is listed
    only those models."""

    @web.middleware
    async def admit(request: web.Request, handler: Any) -> web.StreamResponse:
        local = request.transport.get_extra_info("sockname") if request.transport else None
        if not local or local[0] != container_host:
            return await handler(request)
        table = routes()
        client = table.clients.get(request.remote or "")
        if client is None:
            return refuse(f"{request.remote} is not a container that declared it uses this gateway: name it in "
                          "the container's spec.uses")
        limited = client.gateways.get(local[1], ()) is not None
        model = _model(await request.read()) if limited and request.method == "POST" else None
        refused = client.refusal(local[1], model, table.aliases)
        if refused:
            return refuse(refused)
        answer = await handler(request)
        allowed = client.gateways.get(local[1])
        if allowed is None or request.path != "/v1/models" or not isinstance(answer, web.Response) or answer.status != 200:
            return answer
        listed = json.loads(answer.body)  # its list shows what it may ask for, not what it would be refused
        listed["data"] = [model for model in listed["data"] if model["id"] in allowed or model.get("aliasOf") in allowed]
        return web.json_response(listed)

    return admit


def _model(body: bytes) -> str | None:
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None  # the server answers InvalidJSON
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None
