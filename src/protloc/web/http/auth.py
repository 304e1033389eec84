"""Bearer tokens: a pure ASGI middleware, so streamed upload bodies pass through untouched."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse

from protloc.web.storage import db
from protloc.web.access import Viewer

COOKIE = "protloc_token"
VIEWER_KEY = "protloc.viewer"  # where the middleware leaves who is asking, in the request's scope
OPEN_PATHS = ("/health",)


def is_page_link(method: str, path: str) -> bool:
    """A page a person opens from a link: the only place a token may travel in the address."""
    return method in ("GET", "HEAD") and "/api/" not in path and path != "/openapi.json"


class TokenAuth:
    """With auth on, every path but /health needs a valid, unrevoked token; the request then carries
    its ``Viewer`` (``viewer_of(request)``). ``--auth-token`` tokens are the operator's: admin.

    Accepted: ``Authorization: Bearer TOKEN`` and the ``protloc_token`` cookie on any request;
    ``?token=TOKEN`` only when a page is opened (GET), which answers with a redirect that sets the
    cookie and drops the token from the address, so a browser signs in once by opening a link.
    A token in the address of a POST or an API call is ignored: addresses end up in logs and
    histories.
    """

    def __init__(self, app, settings, sessions, required: bool) -> None:
        self.app = app
        self.sessions = sessions
        self.required = required
        self.static_tokens = set(settings.auth_tokens)

    def viewer(self, token: str | None) -> Viewer | None:
        if not token:
            return None
        if token in self.static_tokens:
            return Viewer(None, "operator", admin=True)
        owner = db.token_owner(self.sessions, token)
        return Viewer(*owner) if owner is not None else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.required or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        link = is_page_link(scope["method"], scope["path"])
        query_token = request.query_params.get("token") if link else None
        token = viewer = None
        for candidate in (bearer, request.cookies.get(COOKIE), query_token):
            if candidate and (viewer := await run_in_threadpool(self.viewer, candidate)) is not None:
                token = candidate
                break
        if token is None:
            hint = ("a token in the address is accepted only when a page is opened; "
                    if "token" in request.query_params and not link else "")
            response = JSONResponse(
                {"detail": f"{hint}a valid API token is required: send 'Authorization: Bearer TOKEN' "
                           "(or open a page with ?token=TOKEN)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        if token == query_token:
            # Signed in by a link: keep the token in a cookie and take it out of the address bar
            # (and out of browser history and later access-log lines).
            remaining = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.replace(query=urlencode(remaining))
            response = RedirectResponse(str(target.path) + (f"?{target.query}" if target.query else ""), status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        scope[VIEWER_KEY] = viewer
        await self.app(scope, receive, send)


def viewer_of(request: Request) -> Viewer | None:
    """Who is asking (None on a server without tokens: everyone sees everything)."""
    return request.scope.get(VIEWER_KEY)
