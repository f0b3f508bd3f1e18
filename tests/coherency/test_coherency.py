"""Coherency on each example: concurrent writers (mutations and plain SQL) and readers, every read checked.

Real PostgreSQL (a private cluster per example: the run rewrites its data),
real gunicorn with two workers. tests/coherency/harness.py explains the
check. ``make test`` runs FRAISESHM_COHERENCY_READS checked reads per
variant (default 2,000); scripts/coherency.py runs the full 20,000.

test_harness_bites runs a set-up that is broken on purpose (listener off
while plain-SQL writers write): the harness must find stale reads there, or
the zeros of test_coherent would prove nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from tests.coherency.stack import EXAMPLES, VARIANTS, cluster_for, run_variant

READS = int(os.environ.get("FRAISESHM_COHERENCY_READS", "2000"))
# Seconds a plain-SQL COMMIT may take to reach the cache. The design's target is
# 0.1 (scripts/coherency.py checks that); a loaded CI machine gets more room here.
# Reads that needed it are counted in the report line, never hidden.
GRACE = 0.5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def example(request: pytest.FixtureRequest) -> Iterator[tuple[str, EmbeddedCluster]]:
    with cluster_for(EXAMPLES[request.param]) as cluster:
        yield request.param, cluster


@pytest.mark.parametrize("variant", ["listener", "mutations"])
def test_coherent(example: tuple[str, EmbeddedCluster], variant: str) -> None:
    name, cluster = example
    report = run_variant(EXAMPLES[name], cluster.dsn, VARIANTS[variant], reads=READS, grace=GRACE)
    print(report.line())
    assert report.reads >= READS
    assert report.writes["mutation"] > 0 and (report.writes["sql"] > 0) == VARIANTS[variant].sql
    assert (report.stale, report.wrong, report.errors) == (0, 0, 0), "\n".join([report.line(), *report.examples])


def test_harness_bites(example: tuple[str, EmbeddedCluster]) -> None:
    name, cluster = example
    report = run_variant(EXAMPLES[name], cluster.dsn, VARIANTS["no-listener-sql"], reads=min(READS, 1500),
                         grace=GRACE)
    print(report.line())
    assert report.stale > 0, report.line()
    assert report.wrong == 0, "\n".join([report.line(), *report.examples])
