"""``OPTIONS`` and ``405`` answers that name every method of a path.

FastAPI makes one route per method; Starlette answers a method a path lacks from the first route
whose path matches, so ``OPTIONS /api/v1/predictions`` said ``Allow: POST`` although ``GET`` is
served there too. This pure ASGI middleware (upload bodies pass through untouched) answers
``OPTIONS`` itself, ``204`` with ``Allow`` listing the methods of every route of the path, and puts
the same list in the ``Allow`` header of a ``405``.
"""

from __future__ import annotations

from starlette.routing import Match


def _routes(routes):
    """The routes, those of included routers too (FastAPI wraps an included router in a route of its
    own; protloc includes its routers without a prefix)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


class AllowedMethods:
    def __init__(self, app) -> None:
        self.app = app

    @staticmethod
    def allowed(scope) -> list[str]:
        methods: set[str] = set()
        for route in _routes(getattr(scope.get("app"), "routes", [])):  # Starlette puts the application in the scope
            if getattr(route, "methods", None) and route.matches(scope)[0] is not Match.NONE:
                methods |= set(route.methods)
        if methods:
            methods |= {"OPTIONS"}
        order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            allowed = self.allowed(scope)
            if allowed:
                await send({"type": "http.response.start", "status": 204,
                            "headers": [(b"allow", ", ".join(allowed).encode())]})
                await send({"type": "http.response.body", "body": b""})
                return

        async def send_with_allow(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allowed = ", ".join(self.allowed(scope)).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", allowed)]}
            await send(message)

        await self.app(scope, receive, send_with_allow)
