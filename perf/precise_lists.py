"""Precise list invalidation, counted: how many cached author lists one post update costs.

Seeds the blog with N authors (5 posts each, C comments per post), caches
one `posts` list per author (each read twice: the second must be a HIT),
sends one updatePost for a post of the first author, reads every list again
and counts the misses (X-Cache). With type-wide list tags every list misses;
with tags per filtered value only the lists the post's old or new values
match (plus, when comments are seeded, the lists embedding that author as a
commenter: the update bumps the author's row tag, whose data lists the post).

Runs against the tree it sits in (perf/common.py ROOT): to measure another
tree, copy this file into its perf/ and run it there with this venv's
python. The change listener is off, so only the mutation's own invalidation
counts (the listener would send the same tags).

    .venv/bin/python perf/precise_lists.py [--authors 200] [--comments 0]
"""

from __future__ import annotations

import argparse
import sys

import httpx

LEGACY = "query($a: ID!) { posts(authorId: $a, limit: 5) { id title } }"
WHERE = "query($a: ID!) { posts(where: {authorId: {eq: $a}}, limit: 5) { id title } }"
TYPE_WIDE = ("query($a: ID!) { posts(where: {_or: [{authorId: {eq: $a}}, {id: {isNull: true}}]}, limit: 5) "
             "{ id title } }")  # same rows; the isNull branch is not matched cheaply: the type-wide tag


def count_misses(client: httpx.Client, query: str, authors: list[str], post: str, title: str) -> int:
    for author in authors:
        client.post("/graphql", json={"query": query, "variables": {"a": author}})
        again = client.post("/graphql", json={"query": query, "variables": {"a": author}})
        assert again.headers["X-Cache"] == "HIT", again.text
    r = client.post("/graphql", json={"query": 'mutation($i: UpdatePostInput!) { updatePost(input: $i) { success } }',
                                      "variables": {"i": {"id": post, "title": title}}})
    assert r.json()["data"]["updatePost"]["success"], r.text
    misses = 0
    for author in authors:
        r = client.post("/graphql", json={"query": query, "variables": {"a": author}})
        assert r.status_code == 200 and "errors" not in r.json(), r.text
        misses += r.headers["X-Cache"] == "MISS"
    return misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=int, default=200)
    parser.add_argument("--comments", type=int, default=0, help="comments per post (by random authors)")
    args = parser.parse_args()
    from common import database, gunicorn, psql  # perf/ on the path: the tree this file sits in

    with database(seed_users=0) as db:
        psql(db.dsn, f"SELECT fn_seed({args.authors}, 5, {args.comments})")
        authors = psql(db.dsn, "SELECT id FROM tb_user ORDER BY pk_user").split()
        post = psql(db.dsn, "SELECT p.id FROM tb_post p ORDER BY p.pk_post LIMIT 1").strip()
        with gunicorn(env={"FRAISESHM_DATABASE_DSN": db.dsn, "FRAISESHM_LISTEN_CHANGES": "false"}) as stack, \
                httpx.Client(base_url=stack.url, timeout=30) as client:
            has_where = "errors" not in client.post("/graphql", json={"query": WHERE, "variables": {"a": authors[0]}}).json()
            queries = [("posts(authorId: ...)", LEGACY)]
            if has_where:
                queries += [("posts(where: {authorId: {eq: ...}})", WHERE),
                            ("posts(where: {_or: [authorId eq, id isNull]}) (type-wide)", TYPE_WIDE)]
            for i, (name, query) in enumerate(queries):
                misses = count_misses(client, query, authors, post, f"retitled {i}")
                print(f"{name}: one updatePost -> {misses} of {len(authors)} cached lists missed "
                      f"({args.comments} comments per post)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
