"""The issue's figure, as a test: 200 cached posts(where: {authorId}) lists over 200 authors, one
post updated: only its author's list misses; with the type-wide tag (a predicate not matched
cheaply) every list does. perf/precise_lists.py prints the same counts for any tree (main: 200)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fraiseshm.db.embedded import EmbeddedCluster
from perf.precise_lists import TYPE_WIDE, WHERE, count_misses
from tests.conftest import BLOG_SQL, PRIVATE_SQL
from tests.integration.server import Server
from tests.integration.test_keys_deps import make_database


@pytest.fixture(scope="module")
def blog200(pg_cluster: EmbeddedCluster) -> Iterator[tuple[httpx.Client, list[str], str]]:
    dsn = make_database(pg_cluster, "figures_it", BLOG_SQL, PRIVATE_SQL)
    pg_cluster.psql("SELECT fn_seed(200, 5, 0)", database="figures_it")  # no comments: see perf/precise_lists.py
    authors = pg_cluster.psql("SELECT id FROM tb_user ORDER BY pk_user", database="figures_it").split()
    post = pg_cluster.psql("SELECT id FROM tb_post ORDER BY pk_post LIMIT 1", database="figures_it").strip()
    with Server(dsn, workers=2, env={"FRAISESHM_LISTEN_CHANGES": "false"}, tag="fig") as srv, \
            srv.client(timeout=30) as client:
        yield client, authors, post


def test_one_post_update_misses_only_its_authors_list(blog200: tuple[httpx.Client, list[str], str]) -> None:
    client, authors, post = blog200
    assert len(authors) == 200
    precise = count_misses(client, WHERE, authors, post, "retitled once")
    wide = count_misses(client, TYPE_WIDE, authors, post, "retitled twice")
    print(f"\none updatePost: {precise} of 200 posts(where: {{authorId}}) lists missed; "
          f"with the type-wide tag {wide} of 200")
    assert (precise, wide) == (1, 200)
