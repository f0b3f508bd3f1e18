"""Step load up to saturation, with locust: users grow by PERF_STEP_USERS every
PERF_STEP_SECONDS on the read-heavy Zipf mix (locust_zipf.ZipfReader).

Proves, when run by hand, where throughput stops growing as locust sees it.
perf/run.py measures saturation with wrk instead (common.wrk, connections
doubled per step), because on this 2-core machine one locust process tops out
near 3k req/s, below what a cached fraiseshm serves; this file keeps the
locust view runnable (responses, checks and thresholds are locust_zipf's):

    .venv/bin/locust -f perf/locust_step.py --headless --host http://127.0.0.1:8000
"""

from __future__ import annotations

import os
from locust import LoadTestShape

from locust_zipf import ZipfReader  # noqa: F401  (the user class locust runs)

STEP_USERS = int(os.environ.get("PERF_STEP_USERS", "8"))
STEP_SECONDS = float(os.environ.get("PERF_STEP_SECONDS", "10"))
STEPS = int(os.environ.get("PERF_STEPS", "8"))


class StepLoad(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        step = int(self.get_run_time() // STEP_SECONDS)
        if step >= STEPS:
            return None
        return (step + 1) * STEP_USERS, float(STEP_USERS)

