"""The ASGI entry point gunicorn loads in each worker: ``fraiseshm.http.asgi:app``.

Imported after fork, so it sees the DSN the master exported when it started
the embedded cluster.
"""

from fraiseshm.config import load_settings
from fraiseshm.http.app import create_app

app = create_app(load_settings())
