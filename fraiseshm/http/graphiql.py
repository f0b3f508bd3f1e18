"""GraphiQL for browsers: GET /graphql with Accept: text/html, its assets from the package.

The assets are graphiql's UMD bundle and React's, vendored from npm at pinned
versions by scripts/vendor_graphiql.sh (static/graphiql/SHA256SUMS), plus
this package's own start-up script and page style. No CDN is involved at run
time. They are read once per worker, served under a URL that carries their
content hash (so they are immutable), gzip-compressed once on first demand.

The page's Content-Security-Policy allows scripts, styles and connections to
this server only (the page has no inline script or style); fonts and images
as data: URIs, which GraphiQL's stylesheet embeds.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import falcon
import falcon.asgi

PREFIX = "/graphiql"
CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# Served in this order on the page; the rest of static/graphiql/ (licences, sums) is not served.
_SCRIPTS = ("graphiql/react.production.min.js", "graphiql/react-dom.production.min.js",
            "graphiql/graphiql.min.js", "graphiql-init.js")
_STYLES = ("graphiql/graphiql.min.css", "graphiql-page.css")


@dataclass
class _Asset:
    data: bytes
    content_type: str
    gzipped: bytes | None = None


@dataclass
class GraphiQL:
    """The page and its assets, loaded from the package once per worker."""

    endpoint: str = "/graphql"
    assets: dict[str, _Asset] = field(default_factory=dict)
    version: str = ""
    page: bytes = b""

    @classmethod
    def load(cls, endpoint: str = "/graphql") -> GraphiQL:
        static = resources.files("fraiseshm.http") / "static"
        assets: dict[str, _Asset] = {}
        digest = hashlib.sha256()
        for name in (*_SCRIPTS, *_STYLES):
            data = (static / name).read_bytes()
            digest.update(name.encode() + b"\0" + data)
            assets[name.rsplit("/", 1)[-1]] = _Asset(data, _TYPES[name[name.rfind("."):]])
        self = cls(endpoint, assets, digest.hexdigest()[:16])
        base = f"{PREFIX}/{self.version}/"
        styles = "".join(f'<link rel="stylesheet" href="{base}{n.rsplit("/", 1)[-1]}">\n' for n in _STYLES)
        scripts = "".join(f'<script src="{base}{n.rsplit("/", 1)[-1]}"></script>\n' for n in _SCRIPTS)
        self.page = (
            '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>GraphiQL - fraiseshm</title>\n{styles}</head>\n<body>\n"
            f'<div id="graphiql" data-endpoint="{endpoint}">Loading GraphiQL...</div>\n{scripts}</body>\n</html>\n'
        ).encode()
        return self

    def serve_page(self, resp: falcon.asgi.Response) -> None:
        resp.status = 200
        resp.content_type = "text/html; charset=utf-8"
        resp.data = self.page
        resp.set_headers({
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Vary": "Accept",  # the same URL answers JSON to API clients
        })


class GraphiQLAssets:
    """GET /graphiql/{version}/{name}: only the files the page names, under the current version."""

    def __init__(self, graphiql: GraphiQL) -> None:
        self.graphiql = graphiql

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, version: str, name: str) -> None:
        asset = self.graphiql.assets.get(name)
        if asset is None or version != self.graphiql.version:
            raise falcon.HTTPNotFound(description=f"no GraphiQL asset {version}/{name}")
        resp.content_type = asset.content_type
        resp.set_headers({
            "Cache-Control": "public, max-age=31536000, immutable",  # the URL changes with the content
            "X-Content-Type-Options": "nosniff",
            "Vary": "Accept-Encoding",
        })
        if "gzip" in (req.get_header("Accept-Encoding") or ""):
            if asset.gzipped is None:
                asset.gzipped = gzip.compress(asset.data, 6, mtime=0)
            resp.set_header("Content-Encoding", "gzip")
            resp.data = asset.gzipped
        else:
            resp.data = asset.data


def wants_html(accept: str | None) -> bool:
    """A browser's navigation: text/html ranked above every JSON type the API answers."""
    if not accept:
        return False
    html = json = 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media == "text/html":
            html = max(html, q)
        elif media in ("application/json", "application/graphql-response+json"):
            json = max(json, q)
    return html > 0 and html > json


def add_graphiql_routes(app: Any, graphiql: GraphiQL) -> None:
    app.add_route(PREFIX + "/{version}/{name}", GraphiQLAssets(graphiql))


__all__ = ["CSP", "GraphiQL", "GraphiQLAssets", "add_graphiql_routes", "wants_html"]
