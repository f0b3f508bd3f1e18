"""A tiny falcon.asgi app that answers every POST with the same bytes.

The baseline of the HTTP benchmarks: same gunicorn worker class, loop and
worker count as fraiseshm, same request body read, no GraphQL and no cache.
It is the ceiling a cached hit can approach. Not a route of the product.
"""

from __future__ import annotations

import falcon
import falcon.asgi

BODY = b'{"data":{"user":{"id":"00000000-0000-0000-0000-000000000000","name":"user 1","email":"user1@example.com"}}}'


class Constant:
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await req.stream.read()
        resp.content_type = "application/json"
        resp.data = BODY

    on_get = on_post


app = falcon.asgi.App()
app.add_route("/graphql", Constant())
