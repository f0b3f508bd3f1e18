from __future__ import annotations

from pathlib import Path

import pytest

from fraiseshm.config import Settings, load_settings
from fraiseshm.errors import ConfigError


def test_defaults_then_toml_then_environment(tmp_path: Path) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text('workers = 3\narena_size = 67108864\nschema_sql = ["a.sql", "b.sql"]\n')
    s = load_settings(toml, environ={"FRAISESHM_WORKERS": "5"})
    assert s.workers == 5  # environment wins over the file
    assert s.arena_size == 64 << 20  # file wins over the default
    assert s.schema_sql == ("a.sql", "b.sql")
    assert s.default_ttl == 86_400.0  # default
    assert load_settings(environ={"FRAISESHM_CONFIG": str(toml)}).workers == 3


def test_environment_types_are_converted() -> None:
    s = load_settings(environ={"FRAISESHM_CACHE_ENABLED": "false", "FRAISESHM_DEFAULT_TTL": "2.5", "FRAISESHM_SCHEMA_SQL": "x.sql,y.sql"})
    assert s.cache_enabled is False and s.default_ttl == 2.5 and s.schema_sql == ("x.sql", "y.sql")


@pytest.mark.parametrize(
    "env, words",
    [
        ({"FRAISESHM_WORKERS": "-1"}, ["workers", "FRAISESHM_WORKERS", ">= 0"]),
        ({"FRAISESHM_ARENA_SIZE": "lots"}, ["arena_size", "FRAISESHM_ARENA_SIZE"]),
        ({"FRAISESHM_WORKRS": "2"}, ["unknown setting", "workrs"]),
        ({"FRAISESHM_BIND": "nowhere"}, ["bind", "host:port"]),
        ({"FRAISESHM_COALESCE_LEASE": "60"}, ["coalesce_lease", "worker_timeout"]),
        ({"FRAISESHM_MAX_ENTRY_BYTES": str(64 << 20)}, ["max_entry_bytes", "FRAISESHM_ARENA_SIZE"]),
        ({"FRAISESHM_LOG_LEVEL": "loud"}, ["log_level"]),
    ],
)
def test_bad_values_name_field_and_source(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    for word in words:
        assert word in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("workers = [\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings(toml, environ={})
    toml.write_text("workers = -4\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*>= 0|>= 0.*bad.toml"):
        load_settings(toml, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.workers = 4  # type: ignore[misc]
    assert s.effective_workers() >= 1
    assert s.host_port() == ("127.0.0.1", 8000)
