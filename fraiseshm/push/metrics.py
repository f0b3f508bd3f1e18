"""/metrics figures of the push: open subscriptions of the whole host, this worker's traffic."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fraiseshm.pids import alive
from fraiseshm.push.hub import Hub, host_connections


class PushCollector(Collector):
    def __init__(self, hub: Callable[[], Hub | None], gauge_prefix: str) -> None:
        self._hub = hub
        self._prefix = gauge_prefix

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        hub = self._hub()
        if hub is None:
            return
        yield GaugeMetricFamily("fraiseshm_push_connections", "open cascadeUpdates subscriptions, every worker of the host",
                                value=host_connections(self._prefix, alive))
        yield CounterMetricFamily("fraiseshm_push_slow_closed", "subscribers closed for falling behind (this worker)",
                                  value=hub.dropped_slow)
        yield CounterMetricFamily("fraiseshm_push_cascades", "cascades fanned out (this worker)", value=hub.published)
