"""Plain ASGI middleware: a request id, one structured log line and a counter per request, body limits.

They wrap the ASGI callables directly (not BaseHTTPMiddleware), so streamed responses pass through
untouched and a request is logged once its last byte has gone (or the client has gone).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.routing import Mount

from .metrics import Metrics

access_log = logging.getLogger("faster_chatterbox.server.access")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestLog:
    """Gives each request an id (the client's X-Request-ID when it is a plain token, else a new one),
    echoes it in the response, counts the answer by route and status, and logs one JSON line: the
    speech handler adds its fields (voice, characters, audio seconds, time to first audio) to
    scope["state"]["speech"]."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start, status = time.perf_counter(), [None]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            code = status[0] or 500
            route = _route_label(scope)
            self.metrics.requests.labels(route, str(code)).inc()
            line = {"id": request_id, "method": scope["method"], "route": route, "status": code,
                    "seconds": round(time.perf_counter() - start, 3), **state.get("speech", {})}
            access_log.info(json.dumps(line))


def _route_label(scope) -> str:
    """The route's template ("/v1/audio/voices/{name}"), never the raw path (unbounded label values)."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    if isinstance(scope.get("app_root_mount"), Mount):
        return scope["app_root_mount"].path
    return "static" if scope.get("endpoint") is not None else "unmatched"


class BodyLimit:
    """Refuse bodies over a limit with 413 while they are read (a Content-Length over it is refused at
    once), so a client can't make the server buffer more: `limits` maps a path prefix to its limit, the
    longest matching prefix wins; `default` is the rest."""

    def __init__(self, app, default: int, limits: dict[str, int]):
        self.app, self.default = app, default
        self.limits = sorted(limits.items(), key=lambda item: -len(item[0]))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = next((n for prefix, n in self.limits if scope["path"].startswith(prefix)), self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            receive = _refusing(limit)
        else:
            receive = _counting(receive, limit)
        await self.app(scope, receive, send)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than {limit} bytes")


def _refusing(limit: int):
    async def receive():
        raise _too_large(limit)
    return receive


def _counting(receive, limit: int):
    seen = 0

    async def counted():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message
    return counted
