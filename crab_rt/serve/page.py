"""The browser page of `crab-rt serve` (and of `serve --ray`): its files, their HTTP headers, and the two
HTTP answers the page needs besides them.

The page (`static/`: plain HTML, CSS and JavaScript, no build step, nothing from a CDN) speaks the same
WebSocket protocol as every other client. A browser's WebSocket cannot send an `Authorization` header, so a
stream may carry its bearer token as the `access_token` query parameter instead (RFC 6750, section 2.3):
`bearer_header` turns either into the header `Server._admit` checks. Before it opens a stream, the page asks
`GET /admit` (with the header, which `fetch` can send) whether the server would take it: the answer is the
handshake's own refusal (401, 503, one line) or 200 with what the page shows (labels, provisional events).
A failed WebSocket handshake tells a page nothing else: the browser hides its status.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qs

__all__ = ["ASSETS", "answer", "asset", "bearer_header", "is_page_request", "SECURITY_HEADERS"]

# URL path -> (file under static/, Content-Type)
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/pcm-worklet.js": ("pcm-worklet.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

# Everything the page loads is its own: scripts, styles and connections to this origin only (CSP 'self' covers
# ws:// and wss:// to the same host in current browsers); no framing, no sniffing, no referrer.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; media-src 'self' blob:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(path: str) -> tuple[bytes, str] | None:
    """(body, Content-Type) of the page file at a URL path (query removed), or None when there is none."""
    entry = ASSETS.get(path)
    if entry is None:
        return None
    name, content_type = entry
    return resources.files("crab_rt.serve").joinpath("static", name).read_bytes(), content_type


def answer(path: str, ui: bool) -> tuple[int, bytes, dict[str, str]]:
    """The HTTP answer to a GET of a page file, (status, body, headers): the file with its Content-Type and the
    security headers, or 404 with one line when the server runs with `--no-ui`."""
    if not ui:
        return 404, b"the browser page is off (crab-rt serve --no-ui)\n", {"Content-Type": "text/plain"}
    body, content_type = asset(path)
    return 200, body, {"Content-Type": content_type, **SECURITY_HEADERS}


def is_page_request(headers) -> bool:
    """True for a plain HTTP GET (a browser opening the page), False for a WebSocket upgrade."""
    return "websocket" not in (headers.get("Upgrade") or "").lower()


def bearer_header(authorization: str | None, query: str) -> str | None:
    """The Authorization header to check: the request's own, else `Bearer <access_token>` from the query string
    (the browser's way; the first `access_token` parameter counts)."""
    if authorization:
        return authorization
    tokens = parse_qs(query, keep_blank_values=True).get("access_token")
    return f"Bearer {tokens[0]}" if tokens else None
