"""WAL positions and the shared LSN board (fraiseshm/db/lsn.py, fraiseshm/db/replicas.py): real shared memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from fraiseshm.db.lsn import commit_bound, format_lsn, parse_lsn
from fraiseshm.db.replicas import C_PRIMARY, C_REPLICA, LsnBoard
from fraiseshm.errors import FraiseshmError

SEGMENT = 16 << 20


def test_lsn_text_round_trip() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn(None) is None and format_lsn(None) == ""


def test_commit_bound_subtracts_only_a_page_header_at_a_page_start() -> None:
    page = 5 * 8192
    assert commit_bound(page + 24, SEGMENT) == page  # short header: the previous record ended at the boundary
    assert commit_bound(page + 40, SEGMENT) == page + 40  # mid-segment: 40 is a real position
    assert commit_bound(3 * SEGMENT + 40, SEGMENT) == 3 * SEGMENT  # long header at a segment start
    assert commit_bound(page + 1000, SEGMENT) == page + 1000


@pytest.fixture
def board() -> Iterator[LsnBoard]:
    name = f"/fraiseshm-test-lsn-{uuid.uuid4().hex[:8]}"
    b = LsnBoard.create(name, 1024)
    try:
        yield b
    finally:
        b.close()
        LsnBoard.unlink(name)


def test_positions_only_grow(board: LsnBoard) -> None:
    assert board.needed(["User:1"]) == 0
    board.raise_tags(["User:1", "User:*"], 500)
    board.raise_tags(["User:1"], 300)  # an older position never lowers a newer one
    assert board.needed(["User:1"]) == 500 and board.needed(["User:*", "Post:2"]) == 500
    assert board.needed(["Post:2"]) in (0, 500)  # 0 unless it shares User:1's slot (then only conservative)
    board.raise_all(700)
    assert board.needed([]) == 700 and board.needed(["User:1"]) == 700


def test_every_process_sees_the_same_positions_and_counters(board: LsnBoard) -> None:
    name = "/" + os.path.basename(board.path).removesuffix(".lsn")
    pids = []
    for k in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: attaches by name, writes its own row and a position
            code = 1
            try:
                mine = LsnBoard.attach(name)
                mine.register()
                for _ in range(100 * (k + 1)):
                    mine.count(C_REPLICA)
                mine.count(C_PRIMARY, 7)
                mine.raise_tags([f"Tag:{k}"], 1000 + k)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    totals = board.totals()
    assert totals["replica"] == 600 and totals["primary"] == 21
    assert [board.needed([f"Tag:{k}"]) >= 1000 + k for k in range(3)] == [True] * 3


def test_attach_refuses_what_is_not_a_board(tmp_path: object) -> None:
    name = f"/fraiseshm-test-notaboard-{uuid.uuid4().hex[:8]}"
    path = LsnBoard.path_for(name)
    with open(path, "wb") as f:
        f.write(b"\x00" * 4096)
    try:
        with pytest.raises(FraiseshmError, match="not a fraiseshm LSN board"):
            LsnBoard.attach(name)
    finally:
        os.unlink(path)


def _described(states: list[str], replica: int, behind: int, primary: int) -> dict:
    reads = replica + primary
    return {"replicas": [{"name": f"r{i}", "state": s, "last_error": ""} for i, s in enumerate(states)],
            "misses": {"replica": replica, "behind": behind, "primary": primary},
            "replica_share": replica / reads if reads else None}


def test_health_advice_follows_the_measured_figures() -> None:
    from fraiseshm.db.replicas import ReplicaSet  # noqa: PLC0415

    rs = ReplicaSet([], primary=None, board=None, max_lag=5, check_interval=1, wait=0)  # type: ignore[arg-type]
    reasons, advice = rs.advice(_described(["down"], 0, 0, 100))
    assert reasons == ["no read replica in rotation: every miss reads the primary"]
    assert any("r0 is down" in a for a in advice)
    reasons, advice = rs.advice(_described(["up"], 100, 400, 400))
    assert not reasons and any("behind the invalidations" in a for a in advice)
    reasons, advice = rs.advice(_described(["up", "up"], 990, 5, 10))
    assert not reasons and any("add another replica" in a for a in advice)
    assert rs.advice(_described(["up"], 50, 0, 50)) == ([], [])
