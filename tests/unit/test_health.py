"""Health verdicts and advice from injected figures and an injected clock (no server, no sleep)."""

from __future__ import annotations

from fraiseshm.metrics.health import DEGRADED, FAILING, OK, Sample, SampleRing, Thresholds, assess

TH = Thresholds()
ZERO = dict.fromkeys(("requests", "hits", "misses", "bypasses", "mutations", "cascade_failures", "evictions"), 0)


def totals(**kw: int) -> dict[str, int]:
    return {**ZERO, **kw}


def test_fresh_server_is_ok() -> None:
    v = assess(Sample(0.0, totals()), None, TH)
    assert (v.status, v.reasons, v.http_status) == (OK, [], 200)


def test_low_hit_rate_degrades_with_field_level_advice() -> None:
    base = Sample(0.0, totals())
    now = Sample(10.0, totals(requests=100, hits=50, misses=50))
    v = assess(now, base, TH)
    assert v.status == DEGRADED and v.http_status == 200
    assert "hit rate 50.0 %" in v.reasons[0] and "field-level caching" in v.advice[0]
    assert v.figures["hit_rate"] == 0.5 and v.figures["read_qps"] == 10.0


def test_bypasses_count_as_queries_not_hits() -> None:
    v = assess(Sample(1.0, totals(requests=40, bypasses=40)), Sample(0.0, totals()), TH)
    assert v.status == DEGRADED and v.figures["hit_rate"] == 0.0


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
