"""The cascade audit trail's records, and the failure rate over a sliding window.

A record is built per mutation after its cascade was planned, verified and
applied (fraiseshm/service.py), queued in the worker, and written to
PostgreSQL in batches by fraiseshm/db/audit.py. ``FailureWindow`` keeps the
failure ratio of the last ``window`` seconds in one-second buckets (bounded
memory) and says when it crosses the alert threshold. Pure code: the clock is
injected.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fraiseshm.cascade.changes import describe

log = logging.getLogger("fraiseshm.audit")


@dataclass(slots=True)
class AuditRecord:
    at: float  # seconds since the epoch
    mutation: str  # the GraphQL mutation field
    transaction_id: str | None
    cascade: Any  # the cascade as the function returned it (JSON), None when absent
    tags: list[str]  # what was invalidated
    duration_ms: float  # the function call, as the server saw it
    verdict: str
    failure: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WindowState:
    mutations: int
    failures: int
    ratio: float
    alerting: bool
    changed: bool  # alerting flipped with this observation


class FailureWindow:
    """Failures / mutations over the last ``window`` seconds, with a threshold alert.

    The alert is raised when the ratio goes above ``threshold`` and cleared when
    it is back at or below it; ``changed`` tells the caller to log the flip once.
    """

    def __init__(self, window: float, threshold: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.threshold = threshold
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, mutations, failures], oldest first
        self._mutations = 0
        self._failures = 0
        self.alerting = False

    def _expire(self, now_s: int) -> None:
        horizon = now_s - int(self.window)
        while self._buckets and self._buckets[0][0] <= horizon:
            _, m, f = self._buckets.popleft()
            self._mutations -= m
            self._failures -= f

    def observe(self, failure: bool) -> WindowState:
        now_s = int(self._clock())
        self._expire(now_s)
        if not self._buckets or self._buckets[-1][0] != now_s:
            self._buckets.append([now_s, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._mutations += 1
        if failure:
            bucket[2] += 1
            self._failures += 1
        return self._state()

    def state(self) -> WindowState:
        self._expire(int(self._clock()))
        return self._state()

    def _state(self) -> WindowState:
        ratio = self._failures / self._mutations if self._mutations else 0.0
        alerting = ratio > self.threshold
        changed = alerting != self.alerting
        self.alerting = alerting
        return WindowState(self._mutations, self._failures, ratio, alerting, changed)


class Auditor:
    """The service's on_cascade hook: one audit record per mutation, and the failure-rate alert.

    ``submit`` queues the record (fraiseshm/db/audit.py AuditWriter.submit).
    The alert is logged at ERROR when the window's failure ratio goes above the
    threshold (and at WARNING when it is back under); every failure is already
    counted in the arena (Counter.CASCADE_FAILURES) by the service.
    """

    def __init__(self, submit: Callable[[AuditRecord], None], window: FailureWindow,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.submit = submit
        self.window = window
        self._wall_clock = wall_clock

    def __call__(self, mutation: Any, response: Any, plan: Any, seq: int | None, call: Any, changes: Any) -> None:
        # As the function returned it (any dialect: FraiseQL v1 puts it under _cascade).
        cascade = response.get("cascade", response.get("_cascade")) if isinstance(response, dict) else None
        details = describe(plan, changes)
        if plan.flush:
            details["flush"] = True
        if seq is not None:
            details["seq"] = seq
        record = AuditRecord(
            at=self._wall_clock(),
            mutation=mutation.field,
            transaction_id=call.transaction_id or plan.transaction_id,
            cascade=cascade,
            tags=sorted(plan.tags),
            duration_ms=call.seconds * 1000.0,
            verdict=plan.verdict,
            failure=plan.is_failure,
            details=details,
        )
        state = self.window.observe(plan.is_failure)
        if state.changed:
            if state.alerting:
                log.error(
                    "ALERT cascade failure rate %.3f%% (%d of %d mutations in the last %.0f s) is above the "
                    "threshold %.3f%% (FRAISESHM_CASCADE_FAILURE_THRESHOLD); see GET /admin/audit?failures=true",
                    state.ratio * 100, state.failures, state.mutations, self.window.window, self.window.threshold * 100,
                )
            else:
                log.warning("cascade failure rate back to %.3f%% (threshold %.3f%%)", state.ratio * 100,
                            self.window.threshold * 100)
        self.submit(record)
