"""PostgreSQL access: the asyncpg pool, the embedded cluster, LISTEN/NOTIFY."""
