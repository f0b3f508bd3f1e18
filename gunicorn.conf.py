# gunicorn configuration for fraiseshm.
#
# Every value comes from the one fraiseshm Settings object (TOML file named by
# FRAISESHM_CONFIG, then FRAISESHM_* environment variables), so gunicorn and
# the workers never disagree. Run:  gunicorn -c gunicorn.conf.py
#
# Process model (../docs/ARCHITECTURE.md):
#   master  on_starting  starts the embedded PostgreSQL when database_dsn is
#                        "embedded", creates the shared-memory arena
#           child_exit   reaps a dead worker's stats slot and flights (runs
#                        even after SIGKILL, unlike worker_exit)
#           on_exit      unlinks the arena
#   worker  imports fraiseshm.http.asgi:app after fork, attaches the arena and
#           opens its asyncpg pool in the ASGI lifespan startup.

from fraiseshm.config import load_settings

_settings = load_settings()

# Server socket
bind = [_settings.bind]
backlog = 2048

# Worker processes: gunicorn's native ASGI worker on uvloop. Default one per
# core: measured on 2 cores, 2 workers beat 4 (see README, benchmarks).
workers = _settings.effective_workers()
# gunicorn's ASGI worker; with fast_hit_protocol, its subclass that answers cache
# hits inside the HTTP/1.1 protocol (fraiseshm/http/worker.py).
worker_class = "fraiseshm.http.worker.FastHitWorker" if _settings.fast_hit and _settings.fast_hit_protocol else "asgi"
asgi_loop = "uvloop"
asgi_lifespan = "on"  # the worker builds its runtime in the lifespan startup
timeout = _settings.worker_timeout  # longer than the coalescing lease (checked by Settings)
graceful_timeout = 10
keepalive = 5

# No control socket under ~/.gunicorn: a service user may have no home.
control_socket_disable = True

wsgi_app = "fraiseshm.http.asgi:app"
proc_name = "fraiseshm"
loglevel = _settings.log_level
accesslog = None
errorlog = "-"

# One handler for every logger, gunicorn's included: text or JSON lines (log_format),
# each line of a request with its request id, control characters a client sent
# (an operationName with a newline...) escaped so they never forge a line.
# Not through logconfig_dict: gunicorn takes any logconfig_dict as "access log on" and then
# builds access-log data per request (and fraiseshm's HTTP/1.1 hit path stands aside).
import logging.config  # noqa: E402

from gunicorn.glogging import Logger as _GunicornLogger  # noqa: E402

from fraiseshm.logs import gunicorn_logconfig  # noqa: E402


class _Logger(_GunicornLogger):
    def setup(self, cfg):  # type: ignore[no-untyped-def]
        super().setup(cfg)
        logging.config.dictConfig(gunicorn_logconfig(_settings))  # replaces gunicorn's own handlers


logger_class = _Logger

_state = {}


def on_starting(server):
    """Master, before any worker exists: database, arena."""
    global _settings
    from fraiseshm.master import start_master

    _state["master"] = start_master(_settings, server.log)
    _settings = _state["master"].settings


def child_exit(server, worker):
    """Master: a worker is gone (exit, crash or SIGKILL): fold its figures, free its flights."""
    master = _state.get("master")
    if master is not None:
        master.reap(worker.pid)


def on_exit(server):
    master = _state.pop("master", None)
    if master is not None:
        master.stop()


def post_worker_init(worker):
    """Worker: on SIGTERM, close push subscribers (1001) at once, then gunicorn's graceful stop;
    otherwise their open sockets would hold the worker for the whole graceful_timeout."""
    import signal

    from fraiseshm.push.hub import drain_all

    def on_term():
        drain_all()
        worker.handle_exit_signal()

    loop = getattr(worker, "loop", None)  # gunicorn's asgi worker; another worker class has no subscribers
    if loop is not None:
        loop.add_signal_handler(signal.SIGTERM, on_term)
