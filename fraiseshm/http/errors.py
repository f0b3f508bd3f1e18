"""The one place where exceptions become HTTP statuses and GraphQL-shaped bodies.

falcon picks the most specific handler for an exception class. Whatever
escapes a resource is logged and answered as a GraphQL error; the worker
keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
import falcon.asgi
import msgspec

from fraiseshm.errors import (
    BodyTooLarge,
    CoalesceTimeout,
    DatabaseUnavailable,
    NotAuthorized,
    RequestError,
    RequestTimeout,
    Unauthenticated,
)

log = logging.getLogger("fraiseshm.http")

_encode = msgspec.json.Encoder().encode


def graphql_error(resp: falcon.asgi.Response, status: int, message: str, code: str) -> None:
    resp.status = status
    resp.content_type = "application/json"
    resp.data = _encode({"errors": [{"message": message, "extensions": {"code": code}}]})


async def _on_body_too_large(_req: Any, resp: falcon.asgi.Response, exc: BodyTooLarge, _params: Any) -> None:
    log.info("rejected body: %s", exc)
    graphql_error(resp, 413, str(exc), "BODY_TOO_LARGE")


async def _on_request_error(_req: Any, resp: falcon.asgi.Response, exc: RequestError, _params: Any) -> None:
    log.info("bad request: %s", exc)
    graphql_error(resp, 400, str(exc), "BAD_REQUEST")


async def _on_database_unavailable(_req: Any, resp: falcon.asgi.Response, exc: DatabaseUnavailable, _params: Any) -> None:
    log.error("%s", exc)
    graphql_error(resp, 503, "the database is unavailable; retry shortly", "DATABASE_UNAVAILABLE")


async def _on_coalesce_timeout(_req: Any, resp: falcon.asgi.Response, exc: CoalesceTimeout, _params: Any) -> None:
    log.warning("%s", exc)
    graphql_error(resp, 504, str(exc), "COALESCE_TIMEOUT")


async def _on_not_authorized(_req: Any, resp: falcon.asgi.Response, exc: NotAuthorized, _params: Any) -> None:
    log.warning("admin request refused: %s", exc)
    graphql_error(resp, 401, str(exc), "UNAUTHORIZED")
    resp.set_header("WWW-Authenticate", "Bearer")


async def _on_unauthenticated(_req: Any, resp: falcon.asgi.Response, exc: Unauthenticated, _params: Any) -> None:
    log.info("bearer token refused: %s", exc)
    graphql_error(resp, 401, str(exc), "UNAUTHENTICATED")
    resp.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')


async def _on_request_timeout(_req: Any, resp: falcon.asgi.Response, exc: RequestTimeout, _params: Any) -> None:
    log.warning("%s", exc)
    graphql_error(resp, 504, str(exc), "REQUEST_TIMEOUT")


async def _on_http_error(_req: Any, resp: falcon.asgi.Response, exc: falcon.HTTPError, _params: Any) -> None:
    # falcon's own errors (405 on an unknown method, 404 ...), GraphQL-shaped.
    graphql_error(resp, exc.status_code, exc.title + (f": {exc.description}" if exc.description else ""), "HTTP_ERROR")
    for name, value in (exc.headers or {}).items():
        resp.set_header(name, value)


async def _on_unexpected(_req: Any, resp: falcon.asgi.Response, exc: Exception, _params: Any) -> None:
    log.exception("internal error: %s", exc)
    graphql_error(resp, 500, "internal server error", "INTERNAL_SERVER_ERROR")


def install_error_handlers(app: falcon.asgi.App) -> None:
    app.add_error_handler(Exception, _on_unexpected)
    app.add_error_handler(falcon.HTTPError, _on_http_error)
    app.add_error_handler(RequestError, _on_request_error)
    app.add_error_handler(BodyTooLarge, _on_body_too_large)
    app.add_error_handler(DatabaseUnavailable, _on_database_unavailable)
    app.add_error_handler(NotAuthorized, _on_not_authorized)
    app.add_error_handler(CoalesceTimeout, _on_coalesce_timeout)
    app.add_error_handler(Unauthenticated, _on_unauthenticated)
    app.add_error_handler(RequestTimeout, _on_request_timeout)
