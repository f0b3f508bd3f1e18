"""The ASGI application: create_app(settings) -> falcon.asgi.App, behind the fast hit path.

Only this package knows Falcon. Everything a worker needs (schema, asyncpg
pool, executor, arena attachment) is built in the ASGI lifespan startup, i.e.
in the worker after fork, never in the gunicorn master. With ``fast_hit`` (the
default) fraiseshm/http/fast_hit.py answers memoised cache hits before falcon and
hands it everything else.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import falcon
import falcon.asgi

from fraiseshm.config import Settings
from fraiseshm.logs import request_id_var
from fraiseshm.http.admin import add_admin_routes
from fraiseshm.http.errors import install_error_handlers
from fraiseshm.http.fast_hit import ASGIApp, FastHit
from fraiseshm.http.graphiql import GraphiQL, add_graphiql_routes
from fraiseshm.http.graphql_resource import GraphQLResource
from fraiseshm.http.health import HealthResource
from fraiseshm.http.metrics_resource import MetricsResource
from fraiseshm.http.request_id import request_id
from fraiseshm.http.subscriptions import SubscriptionsResource
from fraiseshm.runtime import Runtime

log = logging.getLogger("fraiseshm.http")


class _Lifespan:
    """Builds the worker's Runtime on startup and closes it on shutdown."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def process_startup(self, _scope: dict[str, Any], _event: dict[str, Any]) -> None:
        await self.runtime.start()

    async def process_shutdown(self, _scope: dict[str, Any], _event: dict[str, Any]) -> None:
        await self.runtime.stop()


class _WorkerHeader:
    """X-Fraiseshm-Worker: <pid>, so a client can tell which worker answered."""

    def __init__(self) -> None:
        self.pid = str(os.getpid())

    async def process_response(self, _req: Any, resp: falcon.asgi.Response, _resource: Any, _ok: bool) -> None:
        resp.set_header("X-Fraiseshm-Worker", self.pid)


class _RequestId:
    """The request id (the client's header when sane, else made) for the logs of the
    request and the response header of the same name."""

    def __init__(self, header: str) -> None:
        self.header = header

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        rid = request_id(req.get_header(self.header))
        request_id_var.set(rid)  # this request's task; cleared in process_response
        resp.set_header(self.header, rid)

    async def process_response(self, _req: Any, _resp: Any, _resource: Any, _ok: bool) -> None:
        # a keep-alive connection may run its next request in the same task
        request_id_var.set(None)


def create_app(settings: Settings, runtime: Runtime | None = None) -> ASGIApp:
    runtime = runtime or Runtime(settings)
    middleware: list[Any] = [_Lifespan(runtime), _RequestId(settings.request_id_header)]
    if settings.expose_worker_header:
        middleware.append(_WorkerHeader())  # instantiated per worker: the app is imported after fork
    app = falcon.asgi.App(middleware=middleware, cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    graphiql = GraphiQL.load("/graphql") if settings.graphiql else None
    graphql = GraphQLResource(runtime, graphiql)
    app.add_route("/graphql", graphql)
    app.add_route("/graphql/ws", SubscriptionsResource(runtime))  # cascadeUpdates (graphql-transport-ws)
    if graphiql is not None:
        add_graphiql_routes(app, graphiql)
    health = HealthResource(runtime)
    app.add_middleware(health)  # after _Lifespan: seeds its window once the runtime started
    app.add_route("/health", health)
    app.add_route("/metrics", MetricsResource(runtime))
    add_admin_routes(app, runtime)
    install_error_handlers(app)
    if settings.fast_hit:
        return FastHit(app, runtime, graphql.verifier, settings)
    return app
