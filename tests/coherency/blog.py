"""The blog example (examples/blog): writers, read shapes and their facts.

Ownership (see harness.py: one writer per key): writer w owns the seeded users
whose position is w modulo the number of writers, every user it creates, all
posts of its users, and every comment on those posts. Its comments are
written by its own users, and it deletes only users it created (their
comments are then all on its own posts), so ON DELETE CASCADE and the
mutations' own deletes never reach another writer's rows. Seeded comments
are written by any user: renaming a user changes comments of other writers'
posts (that is the derived dependency under test).

Writes, each through a mutation or plain SQL (asyncpg, one statement, its own
transaction) at random:
    user     create, rename, delete (created users only)
    post     create, retitle, delete (its comments go too), move to another
             of the writer's users (SQL only: no mutation for it)
    comment  create, edit (SQL only), delete
Reads: user(id) with its posts, post(id) with author and comments with their
authors, comment(id) with author and post, posts(authorId), comments(postId),
users and posts pages (limit/offset).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import asyncpg
import httpx

from tests.coherency.harness import Fact, History, Members, Obj, Read, Window, Workload, graphql, now

USER = "query($id: ID!) { user(id: $id) { id name email createdAt posts { id title body createdAt } } }"
POST = ("query($id: ID!) { post(id: $id) { id title body createdAt author { id name email } "
        "comments { id body createdAt author { id name } } } }")
COMMENT = "query($id: ID!) { comment(id: $id) { id body createdAt author { id name } post { id title } } }"
POSTS_BY = "query($a: ID!) { posts(authorId: $a, limit: 100) { id title createdAt author { id name } } }"
COMMENTS_ON = "query($p: ID!) { comments(postId: $p, limit: 100) { id body createdAt author { id name } post { id title } } }"
USERS_PAGE = "query($o: Int!) { users(limit: 5, offset: $o) { id name createdAt posts { id title createdAt } } }"
POSTS_PAGE = "query($o: Int!) { posts(limit: 8, offset: $o) { id title createdAt author { id name } } }"

MUTATION = "mutation($input: {t}!) {{ {f}(input: $input) {{ success errors {{ message }} data {{ id createdAt }} }} }}"


def _mutation(field: str, input_type: str) -> str:
    return MUTATION.format(t=input_type, f=field)


CREATE_USER = _mutation("createUser", "CreateUserInput")
UPDATE_USER = _mutation("updateUser", "UpdateUserInput")
DELETE_USER = _mutation("deleteUser", "DeleteUserInput")
CREATE_POST = _mutation("createPost", "CreatePostInput")
UPDATE_POST = _mutation("updatePost", "UpdatePostInput")
DELETE_POST = _mutation("deletePost", "DeletePostInput")
CREATE_COMMENT = _mutation("createComment", "CreateCommentInput")
DELETE_COMMENT = _mutation("deleteComment", "DeleteCommentInput")


async def _mutate(client: httpx.AsyncClient, query: str, field: str, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
    data, _ = await graphql(client, query, {"input": input})
    result = data[field]
    if not result["success"]:
        raise RuntimeError(f"{field}({input}) failed: {result['errors']}")
    return result["data"]


class BlogWriter:
    """One writer's domain (its rows' current images) and its writes."""

    def __init__(self, n: int, use_mutations: bool, use_sql: bool) -> None:
        self.n = n
        self.paths = [p for p, on in (("mutation", use_mutations), ("sql", use_sql)) if on]
        self.users: dict[str, dict[str, Any]] = {}
        self.posts: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, dict[str, Any]] = {}
        self.created_users: set[str] = set()
        self.counter = 0

    def _label(self, what: str) -> str:
        self.counter += 1
        return f"{what} w{self.n} #{self.counter}"

    async def __call__(self, client: httpx.AsyncClient, conn: asyncpg.Connection, rng: random.Random,
                       history: History) -> None:
        ops = [self.rename_user, self.create_post, self.retitle_post, self.delete_post, self.create_comment,
               self.delete_comment, self.edit_comment, self.move_post, self.create_user, self.delete_user]
        weights = [3, 2, 4, 2, 3, 2, 2, 1, 1, 1]
        op = rng.choices(ops, weights)[0]
        path = rng.choice(self.paths)
        if op in (self.edit_comment, self.move_post):  # no mutation exists for these
            if "sql" in self.paths:
                path = "sql"
            else:
                op = self.retitle_post
        changes = await op(client, conn, rng, path)
        if changes is None:
            return
        sent, ack, rows = changes
        history.record(rows, sent, ack, path)
        for kind, key, image in rows:
            table = {"user": self.users, "post": self.posts, "comment": self.comments}[kind]
            if image is None:
                table.pop(key, None)
            else:
                table[key] = image

    # --- users -----------------------------------------------------------------

    async def rename_user(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        uid = rng.choice(sorted(self.users))
        name = self._label("user")
        sent = now()
        if path == "mutation":
            await _mutate(client, UPDATE_USER, "updateUser", {"id": uid, "name": name})
        else:
            await conn.execute("UPDATE tb_user SET name = $2 WHERE id = $1::uuid", uid, name)
        return sent, now(), [("user", uid, {**self.users[uid], "name": name})]

    async def create_user(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        if len(self.created_users) >= 6:
            return await self.delete_user(client, conn, rng, path)
        name = self._label("new user")
        email = f"{uuid.uuid4().hex}@coherency.test"
        sent = now()
        if path == "mutation":
            data = await _mutate(client, CREATE_USER, "createUser", {"name": name, "email": email})
            uid, created = data["id"], data["createdAt"]
        else:
            uid = str(uuid.uuid4())
            created = await conn.fetchval(
                "INSERT INTO tb_user (id, name, email) VALUES ($1::uuid, $2, $3) RETURNING fn_iso8601(created_at)",
                uid, name, email)
        ack = now()
        self.created_users.add(uid)
        return sent, ack, [("user", uid, {"id": uid, "name": name, "email": email, "createdAt": created})]

    async def delete_user(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        alive = sorted(self.created_users & set(self.users))
        if not alive:
            return await self.create_user(client, conn, rng, path) if len(self.created_users) < 6 else None
        uid = rng.choice(alive)
        posts = {p for p, im in self.posts.items() if im["author"] == uid}
        comments = {c for c, im in self.comments.items() if im["author"] == uid or im["post"] in posts}
        sent = now()
        if path == "mutation":
            await _mutate(client, DELETE_USER, "deleteUser", {"id": uid})
        else:
            await conn.execute("DELETE FROM tb_user WHERE id = $1::uuid", uid)
        ack = now()
        self.created_users.discard(uid)
        return sent, ack, ([("user", uid, None)] + [("post", p, None) for p in posts]
                           + [("comment", c, None) for c in comments])

    # --- posts -----------------------------------------------------------------

    async def create_post(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        author = rng.choice(sorted(self.users))
        title, body = self._label("title"), self._label("body")
        sent = now()
        if path == "mutation":
            data = await _mutate(client, CREATE_POST, "createPost", {"authorId": author, "title": title, "body": body})
            pid, created = data["id"], data["createdAt"]
        else:
            pid = str(uuid.uuid4())
            created = await conn.fetchval(
                "INSERT INTO tb_post (id, fk_author, title, body)"
                " SELECT $1::uuid, pk_user, $3, $4 FROM tb_user WHERE id = $2::uuid RETURNING fn_iso8601(created_at)",
                pid, author, title, body)
            assert created is not None
        return sent, now(), [("post", pid, {"id": pid, "title": title, "body": body, "createdAt": created, "author": author})]

    async def retitle_post(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        if not self.posts:
            return await self.create_post(client, conn, rng, path)
        pid = rng.choice(sorted(self.posts))
        title = self._label("title")
        sent = now()
        if path == "mutation":
            await _mutate(client, UPDATE_POST, "updatePost", {"id": pid, "title": title})
        else:
            await conn.execute("UPDATE tb_post SET title = $2 WHERE id = $1::uuid", pid, title)
        return sent, now(), [("post", pid, {**self.posts[pid], "title": title})]

    async def delete_post(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        if len(self.posts) < 8:
            return await self.create_post(client, conn, rng, path)
        pid = rng.choice(sorted(self.posts))
        comments = {c for c, im in self.comments.items() if im["post"] == pid}
        sent = now()
        if path == "mutation":
            await _mutate(client, DELETE_POST, "deletePost", {"id": pid})
        else:
            await conn.execute("DELETE FROM tb_post WHERE id = $1::uuid", pid)
        return sent, now(), [("post", pid, None)] + [("comment", c, None) for c in comments]

    async def move_post(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        if not self.posts or len(self.users) < 2:
            return None
        pid = rng.choice(sorted(self.posts))
        author = rng.choice(sorted(set(self.users) - {self.posts[pid]["author"]}))
        sent = now()
        await conn.execute(
            "UPDATE tb_post SET fk_author = (SELECT pk_user FROM tb_user WHERE id = $2::uuid) WHERE id = $1::uuid",
            pid, author)
        return sent, now(), [("post", pid, {**self.posts[pid], "author": author})]

    # --- comments --------------------------------------------------------------

    async def create_comment(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        if not self.posts:
            return await self.create_post(client, conn, rng, path)
        pid = rng.choice(sorted(self.posts))
        author = rng.choice(sorted(self.users))
        body = self._label("comment")
        sent = now()
        if path == "mutation":
            data = await _mutate(client, CREATE_COMMENT, "createComment", {"postId": pid, "authorId": author, "body": body})
            cid, created = data["id"], data["createdAt"]
        else:
            cid = str(uuid.uuid4())
            created = await conn.fetchval(
                "INSERT INTO tb_comment (id, fk_post, fk_author, body)"
                " SELECT $1::uuid, p.pk_post, u.pk_user, $4 FROM tb_post p, tb_user u"
                " WHERE p.id = $2::uuid AND u.id = $3::uuid RETURNING fn_iso8601(created_at)",
                cid, pid, author, body)
            assert created is not None
        return sent, now(), [("comment", cid, {"id": cid, "body": body, "createdAt": created, "post": pid, "author": author})]

    async def edit_comment(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        if not self.comments:
            return None
        cid = rng.choice(sorted(self.comments))
        body = self._label("comment")
        sent = now()
        await conn.execute("UPDATE tb_comment SET body = $2 WHERE id = $1::uuid", cid, body)
        return sent, now(), [("comment", cid, {**self.comments[cid], "body": body})]

    async def delete_comment(self, client, conn, rng, path):  # noqa: ANN001, ANN201
        if len(self.comments) < 10:
            return await self.create_comment(client, conn, rng, path)
        cid = rng.choice(sorted(self.comments))
        sent = now()
        if path == "mutation":
            await _mutate(client, DELETE_COMMENT, "deleteComment", {"id": cid})
        else:
            await conn.execute("DELETE FROM tb_comment WHERE id = $1::uuid", cid)
        return sent, now(), [("comment", cid, None)]


class Blog(Workload):
    name = "blog"

    def __init__(self) -> None:
        self.history: History | None = None
        self._writers: list[BlogWriter] = []

    async def load(self, history: History, dsn: str) -> None:
        """The seeded rows are version 0 of every key."""
        self.history = history
        history.indexed = {"post": ("author",), "comment": ("post",)}
        conn = await asyncpg.connect(dsn)
        try:
            users = await conn.fetch("SELECT id::text, name, email, fn_iso8601(created_at) AS c FROM tb_user ORDER BY pk_user")
            posts = await conn.fetch(
                "SELECT p.id::text, u.id::text AS author, p.title, p.body, fn_iso8601(p.created_at) AS c"
                " FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_author")
            comments = await conn.fetch(
                "SELECT c.id::text, p.id::text AS post, u.id::text AS author, c.body, fn_iso8601(c.created_at) AS c"
                " FROM tb_comment c JOIN tb_post p ON p.pk_post = c.fk_post JOIN tb_user u ON u.pk_user = c.fk_author")
        finally:
            await conn.close()
        self.user_order = [r["id"] for r in users]
        for r in users:
            history.seed("user", r["id"], {"id": r["id"], "name": r["name"], "email": r["email"], "createdAt": r["c"]})
        for r in posts:
            history.seed("post", r["id"], {"id": r["id"], "title": r["title"], "body": r["body"], "createdAt": r["c"],
                                           "author": r["author"]})
        for r in comments:
            history.seed("comment", r["id"], {"id": r["id"], "body": r["body"], "createdAt": r["c"], "post": r["post"],
                                              "author": r["author"]})

    def writers(self, n: int, mutations: bool, sql: bool) -> list[BlogWriter]:
        assert self.history is not None
        h = self.history
        self._writers = [BlogWriter(i, mutations, sql) for i in range(n)]
        owner = {uid: self._writers[i % n] for i, uid in enumerate(self.user_order)}
        for uid, w in owner.items():
            w.users[uid] = h.versions[("user", uid)][0].image  # type: ignore[assignment]
        post_owner = {}
        for (kind, key), versions in h.versions.items():
            if kind == "post":
                im = versions[0].image
                owner[im["author"]].posts[key] = im
                post_owner[key] = owner[im["author"]]
        for (kind, key), versions in h.versions.items():
            if kind == "comment":
                im = versions[0].image
                post_owner[im["post"]].comments[key] = im
        return self._writers

    def next_read(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        assert self.history is not None
        keys = self.history.keys

        def pick(kind: str) -> str:
            # a third of the picks among the rows created last: their lists are empty or short and
            # change membership without touching any row the cached entry holds (list-membership tags)
            recent = self.history.recent[kind][-8:] if self.history else []
            if recent and rng.random() < 0.33:
                return rng.choice(recent)
            # skewed towards a hot set, so that reads hit cached entries that writes must invalidate
            ordered = sorted(keys[kind])
            return ordered[int(len(ordered) * rng.random() ** 2)]

        shape = rng.choices(["user", "post", "comment", "posts_by", "comments_on", "users_page", "posts_page"],
                            [3, 3, 2, 2, 2, 1, 1])[0]
        if shape == "user":
            return shape, USER, {"id": pick("user")}
        if shape == "post":
            return shape, POST, {"id": pick("post")}
        if shape == "comment":
            return shape, COMMENT, {"id": pick("comment")}
        if shape == "posts_by":
            return shape, POSTS_BY, {"a": pick("user")}
        if shape == "comments_on":
            return shape, COMMENTS_ON, {"p": pick("post")}
        if shape == "users_page":
            return shape, USERS_PAGE, {"o": rng.randrange(0, len(keys["user"]), 5)}
        return shape, POSTS_PAGE, {"o": rng.randrange(0, 64, 8)}

    def facts(self, read: Read) -> list[Fact]:
        d = read.body
        p = read.params
        facts: list[Fact] = []

        def user(u: dict[str, Any] | None, key: str | None = None) -> None:
            if u is None:
                assert key is not None
                facts.append(Obj("user", key, None))
                return
            facts.append(Obj("user", u["id"], {k: v for k, v in u.items() if k != "posts"}))
            if "posts" in u:
                facts.append(Members("post", "author", u["id"], [(x["id"], dict(x)) for x in u["posts"]]))

        def post_fields(x: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in x.items() if k not in ("author", "comments")}
            if x.get("author") is not None:
                out["author"] = x["author"]["id"]
                user(x["author"])
            return out

        def comment_fields(x: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in x.items() if k not in ("author", "post")}
            if x.get("author") is not None:
                out["author"] = x["author"]["id"]
                user(x["author"])
            if x.get("post") is not None:
                out["post"] = x["post"]["id"]
                facts.append(Obj("post", x["post"]["id"], {k: v for k, v in x["post"].items()}))
            return out

        if read.shape == "user":
            user(d["user"], p["id"])
        elif read.shape == "post":
            x = d["post"]
            if x is None:
                facts.append(Obj("post", p["id"], None))
            else:
                facts.append(Obj("post", x["id"], post_fields(x)))
                facts.append(Members("comment", "post", x["id"], [(c["id"], comment_fields(c)) for c in x["comments"]]))
        elif read.shape == "comment":
            x = d["comment"]
            facts.append(Obj("comment", p["id"], None if x is None else comment_fields(x)))
        elif read.shape == "posts_by":
            facts.append(Members("post", "author", p["a"], [(x["id"], post_fields(x)) for x in d["posts"]]))
        elif read.shape == "comments_on":
            facts.append(Members("comment", "post", p["p"], [(x["id"], comment_fields(x)) for x in d["comments"]]))
        elif read.shape == "users_page":
            served = []
            for u in d["users"]:
                user(u)
                served.append((u["id"], {"name": u["name"]}))
            facts.append(Window("user", p["o"], 5, served))
        elif read.shape == "posts_page":
            facts.append(Window("post", p["o"], 8, [(x["id"], post_fields(x)) for x in d["posts"]]))
        return facts
