"""The GraphQL documents the scenarios send, by operation-name suffix (locust-free, so run.py can warm with wrk)."""

from __future__ import annotations


def user_q(op: str) -> str:
    return f"query U{op}($id: ID!) {{ user(id: $id) {{ id name email }} }}"


def posts_q(op: str) -> str:
    return f"query P{op}($id: ID!) {{ posts(authorId: $id, limit: 5) {{ id title author {{ id name }} }} }}"


def rename_q(op: str) -> str:
    return f"mutation M{op}($id: ID!, $n: String) {{ updateUser(input: {{id: $id, name: $n}}) {{ success data {{ id name }} }} }}"
