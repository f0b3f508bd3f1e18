"""Verified identity (fraiseshm/identity.py) and JSON depth bounds, without a server."""

from __future__ import annotations

import base64
import json
import logging
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fraiseshm.config import load_settings
from fraiseshm.errors import ConfigError, JSONTooDeep, RequestError, Unauthenticated
from fraiseshm.identity import ANONYMOUS, Verifier, encode_scope
from fraiseshm.jsondepth import check_depth, decode
from fraiseshm.logs import EscapeControlCharacters

SECRET = "unit-test-secret-of-sixty-four-bytes-for-every-hmac-algorithm-00"


def _verifier(**env: str) -> Verifier:
    return Verifier(load_settings(environ={"FRAISESHM_JWT_SECRET": SECRET, **{f"FRAISESHM_{k.upper()}": v for k, v in env.items()}}))


def _token(claims: dict, key: object = SECRET, alg: str = "HS256", **kw: object) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, key, algorithm=alg, **kw)  # type: ignore[arg-type]


def test_scope_is_typed_and_unambiguous() -> None:
    v = _verifier(scope_claims="sub,tenant", scope_header="X-Tenant", scope_header_trusted="true")
    scopes = [
        v.identify(f"Bearer {_token({'sub': 'u1'})}", "t1").scope,
        v.identify(f"Bearer {_token({'sub': 't1|u1'})}", None).scope,
        v.identify(f"Bearer {_token({'sub': 'u', 'tenant': 123})}", None).scope,
        v.identify(f"Bearer {_token({'sub': 'u', 'tenant': '123'})}", None).scope,
        v.identify(f"Bearer {_token({'sub': 'u', 'tenant': None})}", None).scope,
        v.identify(f"Bearer {_token({'sub': 'u'})}", None).scope,
        v.identify(None, "t1").scope,
        v.identify(f"Bearer {_token({})}", None).scope,
    ]
    assert len(set(scopes)) == len(scopes) and b"" not in scopes
    assert v.identify(None, None) is ANONYMOUS
    assert encode_scope({"b": 1, "a": 2}, {}, None) == encode_scope({"a": 2, "b": 1}, {}, None)


def test_claims_json_holds_only_the_configured_claims() -> None:
    identity = _verifier().identify(f"Bearer {_token({'sub': 'u1', 'email': 'x@y', 'iat': 1})}", None)
    assert json.loads(identity.claims_json() or "") == {"sub": "u1"}


def test_bad_tokens() -> None:
    v = _verifier(jwt_audience="blog")
    good = _token({"sub": "u", "aud": "blog"})
    assert v.identify(f"Bearer {good}", None).claims == {"sub": "u"}
    none = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode() + "." + good.split(".")[1] + "."
    for bad in (none, _token({"sub": "u", "aud": "x"}), _token({"sub": "u", "aud": "blog"}, key="k" * 64),
                _token({"sub": "u", "aud": "blog", "exp": 1}), "a.b", "x" * 9000):
        with pytest.raises(Unauthenticated):
            v.identify(f"Bearer {bad}", None)
    deep = "eyJhbGciOiJIUzI1NiJ9." + base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).rstrip(b"=").decode() + ".x"
    with pytest.raises(JSONTooDeep):
        v.identify(f"Bearer {deep}", None)
    with pytest.raises(RequestError):
        v.identify("Bearer " + base64.urlsafe_b64encode(b"{x").decode() + ".e30.x", None)


def test_verified_tokens_are_remembered_until_exp() -> None:
    v = _verifier(jwt_cache_size="2")
    tok = _token({"sub": "u"})
    first = v.identify(f"Bearer {tok}", None)
    assert v.identify(f"Bearer {tok}", None) is first  # the LRU answered, no signature check
    # past its exp the remembered entry is dropped and the token verified again
    v._cache[tok] = type(first)(first.claims, first.headers, first.role, first.scope, expires=time.time() - 1)  # noqa: SLF001
    again = v.identify(f"Bearer {tok}", None)
    assert again is not first and again.scope == first.scope
    for i in range(5):  # bounded
        v.identify(f"Bearer {_token({'sub': str(i)})}", None)
    assert len(v._cache) == 2  # noqa: SLF001


def test_es256_from_a_jwks_file(tmp_path) -> None:  # noqa: ANN001
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    v = Verifier(load_settings(environ={"FRAISESHM_JWT_PUBLIC_KEYS": str(tmp_path / "jwks.json")}))
    tok = _token({"sub": "u"}, key=key, alg="ES256", headers={"kid": "k1"})
    assert v.identify(f"Bearer {tok}", None).claims == {"sub": "u"}
    with pytest.raises(Unauthenticated):  # an HS256 token signed with the public key's bytes (alg confusion)
        v.identify(f"Bearer {_token({'sub': 'u'}, key=SECRET)}", None)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "key.pem").write_bytes(pem)
    v = Verifier(load_settings(environ={"FRAISESHM_JWT_PUBLIC_KEYS": str(tmp_path / "key.pem"), "FRAISESHM_JWT_ALGORITHMS": "ES256"}))
    assert v.identify(f"Bearer {tok}", None).claims == {"sub": "u"}


def test_identity_settings_are_checked() -> None:
    for env in ({"FRAISESHM_JWT_SECRET": "short"}, {"FRAISESHM_JWT_ALGORITHMS": "none"},
                {"FRAISESHM_SCOPE_HEADER": "X-Tenant"}, {"FRAISESHM_JWT_ALGORITHMS": "RS256"},
                {"FRAISESHM_DB_ROLE": "x; DROP TABLE y"}, {"FRAISESHM_JWT_ROLE_CLAIM": "role"}):
        with pytest.raises(ConfigError):
            load_settings(environ=env)


def test_json_depth() -> None:
    assert decode(json.loads, "[[1]]", "x", 2) == [[1]]
    with pytest.raises(JSONTooDeep):
        decode(json.loads, "[[[1]]]", "x", 2)
    with pytest.raises(JSONTooDeep):
        check_depth({"a": {"b": {"c": [1]}}}, "variables", 3)
    import msgspec

    with pytest.raises(JSONTooDeep):  # msgspec itself would raise RecursionError
        decode(msgspec.json.decode, b"[" * 100_000 + b"]" * 100_000, "body", 64)


def test_log_lines_cannot_be_forged() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "operation %s", ("A\nFORGED\u2028B\x1b[31m",), None)
    EscapeControlCharacters().filter(record)
    assert record.getMessage() == "operation A\\x0aFORGED\\u2028B\\x1b[31m"
