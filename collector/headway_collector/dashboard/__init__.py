"""`GET /`: the dashboard (docs/collector.md, "The dashboard"), three static files that read the
query API.

The page needs no key to load and holds no data: every number comes from the read API, asked
by the browser with the read key the user gives. Its Content-Security-Policy lets it talk to
this collector only, so nothing is fetched from, or sent to, anywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

__all__ = ["FILES", "routes"]

FILES = {  # served at /<name>; index.html at /
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _endpoint(content: bytes, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        return Response(
            content, media_type=media_type, headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"}
        )

    return serve


def routes() -> list[BaseRoute]:
    here = resources.files(__name__)
    return [
        Route(
            "/" if name == "index.html" else f"/{name}",
            _endpoint(here.joinpath(name).read_bytes(), media_type),
            methods=["GET"],
        )
        for name, media_type in FILES.items()
    ]
