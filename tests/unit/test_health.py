"""Health verdicts and advice from injected figures and an injected clock (no server, no sleep)."""

from __future__ import annotations

from fraiseshm.metrics.health import DEGRADED, FAILING, OK, Sample, SampleRing, Thresholds, assess

TH = Thresholds(min_queries=20)
ZERO = dict.fromkeys(("requests", "hits", "misses", "bypasses", "mutations", "cascade_failures", "evictions"), 0)


def totals(**kw: int) -> dict[str, int]:
    return {**ZERO, **kw}


def test_fresh_server_is_ok() -> None:
    v = assess(Sample(0.0, totals()), None, TH)
    assert (v.status, v.reasons, v.http_status) == (OK, [], 200)


def test_low_hit_rate_degrades_with_advice_an_operator_can_act_on() -> None:
    base = Sample(0.0, totals())
    now = Sample(10.0, totals(requests=100, hits=50, misses=50))
    v = assess(now, base, TH)
    assert v.status == DEGRADED and v.http_status == 200
    assert "hit rate 50.0 %" in v.reasons[0]
    assert "fraiseshm stats" in v.advice[0] and "FRAISESHM_ARENA_SIZE" in v.advice[0]
    assert "docs/runbooks/low-hit-rate.md" in v.advice[0]
    assert v.figures["hit_rate"] == 0.5 and v.figures["read_qps"] == 10.0


def test_bypasses_count_as_queries_not_hits() -> None:
    v = assess(Sample(1.0, totals(requests=40, bypasses=40)), Sample(0.0, totals()), TH)
    assert v.status == DEGRADED and v.figures["hit_rate"] == 0.0


def test_default_minimum_sample_ignores_a_few_hand_made_queries() -> None:
    # issue 19: 29 hand-made queries turned /health degraded; the default needs 200
    assert assess(Sample(30.0, totals(misses=29, hits=0)), Sample(0.0, totals()), Thresholds()).status == OK
    assert assess(Sample(30.0, totals(misses=199)), Sample(0.0, totals()), Thresholds()).status == OK
    assert assess(Sample(30.0, totals(misses=200)), Sample(0.0, totals()), Thresholds()).status == DEGRADED


def test_hit_rate_needs_enough_queries_and_is_windowed() -> None:
    assert assess(Sample(1.0, totals(misses=19)), Sample(0.0, totals()), TH).status == OK
    # 1,000 misses long ago, then a window of hits only: ok again
    base = Sample(100.0, totals(misses=1000))
    assert assess(Sample(160.0, totals(misses=1000, hits=100)), base, TH).status == OK
    # exactly at the threshold is not below it
    assert assess(Sample(1.0, totals(hits=75, misses=25)), Sample(0.0, totals()), TH).status == OK


def test_database_down_is_failing_503() -> None:
    v = assess(Sample(0.0, totals()), None, TH, database_error="ConnectionRefusedError: nope")
    assert v.status == FAILING and v.http_status == 503
    assert v.reasons == ["database unreachable: ConnectionRefusedError: nope"]


def test_unlinked_arena_is_failing() -> None:
    assert assess(Sample(0.0, totals()), None, TH, arena_linked=False).status == FAILING
    # no arena at all (cache off): nothing to be unlinked
    assert assess(Sample(0.0, {}), None, TH, arena_linked=False, cache_enabled=False).status == OK


def test_read_qps_near_and_over_the_limit() -> None:
    base = Sample(0.0, totals())
    near = assess(Sample(10.0, totals(requests=170_000, hits=170_000)), base, TH)  # 17k/s
    assert near.status == OK and any("read replicas" in a for a in near.advice)
    over = assess(Sample(10.0, totals(requests=210_000, hits=210_000)), base, TH)
    assert over.status == DEGRADED and "read QPS 21,000" in over.reasons[0]
    calm = assess(Sample(10.0, totals(requests=100_000, hits=100_000)), base, TH)
    assert calm.status == OK and calm.advice == []


def test_mutation_qps_near_the_limit() -> None:
    v = assess(Sample(1.0, totals(requests=4500, mutations=4500)), Sample(0.0, totals()), TH)
    assert v.figures["mutation_qps"] == 4500.0 and v.figures["read_qps"] == 0.0
    assert any("mutation QPS 4,500 is near 5,000" in a for a in v.advice)


def test_cascade_failure_ratio_over_threshold() -> None:
    base = Sample(0.0, totals())
    ok = assess(Sample(60.0, totals(requests=10_000, mutations=10_000, cascade_failures=5)), base, TH)
    assert ok.status == OK  # 0.05 % is not over 0.05 %
    bad = assess(Sample(60.0, totals(requests=10_000, mutations=10_000, cascade_failures=6)), base, TH)
    assert bad.status == DEGRADED and "cascade failure ratio" in bad.reasons[0]
    assert "fraiseshm audit" in bad.advice[0]
    strict = Thresholds(cascade_failure_ratio=0.0)
    assert assess(Sample(1.0, totals(mutations=10_000, cascade_failures=1)), base, strict).status == DEGRADED


def test_full_arena_that_evicts_says_raise_the_size() -> None:
    base = Sample(0.0, totals(), fill_ratio=0.95)
    v = assess(Sample(10.0, totals(evictions=500), fill_ratio=0.95), base, TH)
    assert v.status == DEGRADED and "evicting 50.0 entries/s" in v.reasons[0]
    assert "FRAISESHM_ARENA_SIZE" in v.advice[0]
    # full but not evicting, or evicting while mostly empty (one big class): no verdict
    assert assess(Sample(10.0, totals(), fill_ratio=0.95), base, TH).status == OK
    assert assess(Sample(10.0, totals(evictions=500), fill_ratio=0.5), base, TH).status == OK


def test_lock_wipes_in_the_window_degrade() -> None:
    v = assess(Sample(5.0, totals(), lock_wipes=2), Sample(0.0, totals(), lock_wipes=1), TH)
    assert v.status == DEGRADED and "1 arena shard(s) wiped" in v.reasons[0]
    assert "fraiseshm check" in v.advice[0]
    v = assess(Sample(5.0, totals(), corruption_wipes=3), Sample(0.0, totals(), corruption_wipes=1), TH)
    assert v.status == DEGRADED and "2 arena shard(s) wiped" in v.reasons[0]


def test_worker_restarts_degrade_for_a_while() -> None:
    figs = {"totals": totals(), "fill_ratio": 0.0, "lock_wipes": 0, "workers": 2, "master_started_at": 1000.0,
            "processes": [{"pid": 1, "started_at": 1001.0}, {"pid": 2, "started_at": 1500.0}],
            "listener_pid": 1}
    # the worker started 500 s after its master was restarted; 100 s ago: degraded
    v = assess(Sample.of(1.0, figs, wall=1600.0, thresholds=TH), None, TH)
    assert v.status == DEGRADED and v.reasons == ["1 worker(s) restarted in the last 15 minutes"]
    assert "FRAISESHM_WORKER_TIMEOUT" in v.advice[0] and "worker-restarts.md" in v.advice[0]
    # 15 minutes later: ok again; the workers of the start-up never count
    assert assess(Sample.of(1.0, figs, wall=2500.0, thresholds=TH), None, TH).status == OK
    figs["processes"][1]["started_at"] = 1030.0
    assert assess(Sample.of(1.0, figs, wall=1100.0, thresholds=TH), None, TH).status == OK


def test_absent_listener_degrades_only_when_one_is_expected() -> None:
    figs = {"totals": totals(), "fill_ratio": 0.0, "lock_wipes": 0, "workers": 2, "master_started_at": None,
            "processes": [], "listener_pid": None}
    v = assess(Sample.of(1.0, figs, wall=0.0, thresholds=TH), None, TH)
    assert v.status == DEGRADED and "listens for changes" in v.reasons[0]
    assert "FRAISESHM_LISTEN_CHANGES" in v.advice[0] and "listener-gone.md" in v.advice[0]
    assert assess(Sample.of(1.0, figs, wall=0.0, thresholds=TH, listener_expected=False), None, TH).status == OK
    figs["listener_pid"] = 42
    assert assess(Sample.of(1.0, figs, wall=0.0, thresholds=TH), None, TH).status == OK


def test_every_advice_names_a_runbook_that_exists_and_no_jargon() -> None:
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parents[2]
    source = (root / "fraiseshm/metrics/health.py").read_text()
    pages = set(re.findall(r"docs/runbooks/[a-z0-9-]+\.md", source))
    assert len(pages) >= 8, pages
    for page in pages:
        assert (root / page).is_file(), page
    assert "Phase" not in source and "17B" not in source
    # the settings and commands the advice names are real
    import msgspec

    from fraiseshm.cli import build_parser
    from fraiseshm.config import Settings

    fields = {f.name for f in msgspec.structs.fields(Settings)}
    for name in re.findall(r"FRAISESHM_([A-Z0-9_]+)", source):
        assert name.lower() in fields, name
    for command in re.findall(r"`fraiseshm ([^`]+)`", source):
        build_parser().parse_args(command.replace("DSN", "postgresql://x").split())


def test_ring_baseline_is_the_newest_sample_a_window_old() -> None:
    clock = [0.0]
    ring = SampleRing(window=60.0, size=8, clock=lambda: clock[0])
    assert ring.push(Sample(ring.now(), totals())) is None
    for t in (10.0, 30.0, 65.0, 80.0):
        clock[0] = t
        base = ring.push(Sample(ring.now(), totals(requests=int(t))))
    assert base is not None and base.t == 10.0  # 80 - 10 >= 60 and 80 - 30 < 60
    clock[0] = 200.0
    assert ring.push(Sample(ring.now(), totals())).t == 80.0  # noqa: PLR2004


def test_ring_is_bounded() -> None:
    ring = SampleRing(window=1e9, size=4, clock=lambda: 0.0)
    for t in range(100):
        ring.push(Sample(float(t), totals()))
    assert len(ring) == 4
    # with a window longer than the history, the oldest kept sample is the baseline
    assert ring.push(Sample(100.0, totals())).t == 96.0  # noqa: PLR2004


def test_health_endpoint_measures_a_real_window_from_its_first_call() -> None:
    """issue 19: window_seconds read 0.0 right after start. The ring is seeded in the
    ASGI lifespan startup, so the first /health measures since then (clock injected)."""
    import asyncio
    import os

    import falcon.asgi
    from falcon import testing

    from fraiseshm.arena import Arena, Counter
    from fraiseshm.config import load_settings
    from fraiseshm.http.health import HealthResource
    from fraiseshm.runtime import Runtime

    name = f"/fraiseshm-health-{os.getpid()}"
    arena = Arena.create(name, size=8 << 20, max_entry=64 << 10, shards=2)
    try:
        arena.register_process()
        runtime = Runtime(load_settings(environ={"FRAISESHM_LISTEN_CHANGES": "false"}))
        runtime.arena = arena  # the worker's attachment; no database: /health says so
        clock = [100.0]
        health = HealthResource(runtime, ring=SampleRing(clock=lambda: clock[0]))
        app = falcon.asgi.App()
        app.add_middleware(health)
        app.add_route("/health", health)

        async def first_call() -> dict:
            async with testing.ASGIConductor(app) as conductor:  # runs the lifespan startup
                clock[0] = 101.0
                arena.incr(Counter.REQUESTS, 50)
                return (await conductor.simulate_get("/health")).json

        body = asyncio.run(first_call())
        assert body["figures"]["window_seconds"] == 1.0
        assert body["figures"]["read_qps"] == 50.0
        assert body["reasons"] == ["database unreachable: worker not started"]
    finally:
        arena.close()
        Arena.unlink(name)
