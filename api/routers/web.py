"""The web page: `GET /` redirects to `/app/`, which serves the static files of `api/web`.

The page is plain HTML, CSS and JavaScript shipped in the package (no build step, no CDN: it
works offline) and talks to the same public API as any client, with the key the user enters.
Its files carry a Content-Security-Policy that allows scripts and styles from this origin only;
videos and thumbnails may come from another origin (S3 presigned URLs).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent.parent / "web"
PREFIX = "/app"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' http: https: data:; media-src 'self' http: https:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/")


class _Page(StaticFiles):
    """The static files, with the page's security headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-cache"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(PREFIX, _Page(directory=STATIC, html=True), name="web")
