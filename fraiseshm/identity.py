"""Verified identity: who a request is, as PostgreSQL and the cache key see it.

    Authorization: Bearer <JWT>  -> pyjwt verifies the signature (HS* with the
                                    secret, RS*/ES*/PS*/EdDSA with a PEM or JWKS
                                    key), exp/nbf, iss/aud when configured
    no Authorization             -> anonymous
    a bad, expired, unsigned or wrongly addressed token -> Unauthenticated (401)
    token segments that are not JSON or nest too deep   -> JSONTooDeep / RequestError (400)
    <scope_header>: value        -> honoured only with scope_header_trusted
                                    (a gateway in front sets it and strips the client's)

An Identity carries what reaches PostgreSQL (``request.jwt.claims``: the
configured ``scope_claims`` of the verified token; ``request.headers``: the
trusted scope header; the role) and ``scope``, the canonical encoding of all
of that which keys private cache entries. The encoding is msgspec JSON with
sorted keys of one typed object, so values stay typed (``"sub": 123`` and
``"sub": "123"`` differ) and no concatenation can make two identities collide.

PERF: verified tokens are remembered per worker in a bounded LRU keyed by the
token bytes, until their ``exp`` (less the leeway) passes: a repeated token
costs one dict lookup, not a signature check.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import msgspec

from fraiseshm import jsondepth
from fraiseshm.config import Settings
from fraiseshm.errors import ConfigError, RequestError, Unauthenticated

MAX_TOKEN_BYTES = 8192  # a bearer token above this is refused before any decoding

_canonical = msgspec.json.Encoder(order="sorted").encode
_decode_json = msgspec.json.decode


@dataclass(frozen=True, slots=True)
class Identity:
    claims: dict[str, Any] | None  # verified claims named by scope_claims (present ones); None = no token
    headers: dict[str, str]  # the trusted scope header, lower-cased name -> value
    role: str | None  # PostgreSQL role for SET LOCAL ROLE; None = db_role / the pool's user
    scope: bytes  # canonical encoding of all of the above; b"" = anonymous
    expires: float = float("inf")  # epoch seconds after which a remembered token is re-verified

    @property
    def anonymous(self) -> bool:
        return not self.scope

    def claims_json(self) -> str | None:
        return _canonical(self.claims).decode() if self.claims is not None else None

    def headers_json(self) -> str | None:
        return _canonical(self.headers).decode() if self.headers else None


def encode_scope(claims: dict[str, Any] | None, headers: dict[str, str], role: str | None) -> bytes:
    """One typed JSON object: {"claims": {...} | null, "headers": {...}, "role": ...}."""
    if claims is None and not headers and role is None:
        return b""
    return _canonical({"claims": claims, "headers": headers, "role": role})


ANONYMOUS = Identity(claims=None, headers={}, role=None, scope=b"")


class Verifier:
    """One per worker: verifies bearer tokens and reads the trusted scope header."""

    def __init__(self, settings: Settings) -> None:
        self.algorithms = list(settings.accepted_jwt_algorithms())
        self.enabled = bool(self.algorithms)
        self.issuer = settings.jwt_issuer or None
        self.audience = settings.jwt_audience or None
        self.leeway = settings.jwt_leeway
        self.claim_names = tuple(settings.scope_claims)
        self.role_claim = settings.jwt_role_claim
        self.roles = frozenset(settings.db_roles)
        self.max_depth = settings.max_json_depth
        self.header = settings.scope_header.lower() if settings.scope_header and settings.scope_header_trusted else ""
        self.cache_size = settings.jwt_cache_size
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._options: dict[str, Any] = {"require": ["exp"] if settings.jwt_require_exp else []}
        if self.issuer:
            self._options["require"].append("iss")
        if self.audience:
            self._options["require"].append("aud")
        self._secret = settings.jwt_secret
        self._keys: dict[str | None, Any] = _load_public_keys(settings.jwt_public_keys) if settings.jwt_public_keys else {}
        # Vary: the request headers a scoped response depends on
        self.vary = ", ".join(h for h in ("Authorization" if self.enabled else "", settings.scope_header if self.header else "") if h)

    def identify(self, authorization: str | None, scope_header: str | None) -> Identity:
        token_identity = self._from_token(authorization) if authorization else None
        headers = {self.header: scope_header} if self.header and scope_header else {}
        if not headers:
            return token_identity or ANONYMOUS
        base = token_identity or ANONYMOUS
        return Identity(claims=base.claims, headers=headers, role=base.role,
                        scope=encode_scope(base.claims, headers, base.role), expires=base.expires)

    # --- tokens ------------------------------------------------------------------

    def _from_token(self, authorization: str) -> Identity:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("Authorization must be 'Bearer <JWT>'")
        if not self.enabled:
            raise Unauthenticated("this server accepts no bearer tokens (no jwt_secret or jwt_public_keys configured)")
        remembered = self._cache.get(token)
        if remembered is not None:
            if remembered.expires > time.time() - self.leeway:
                self._cache.move_to_end(token)
                return remembered
            del self._cache[token]
        identity = self._verify(token)
        if self.cache_size:
            self._cache[token] = identity
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return identity

    def _verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"bearer token is {len(token)} bytes; the limit is {MAX_TOKEN_BYTES}")
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthenticated("bearer token is not a JWT (header.payload.signature)")
        header = self._segment(parts[0], "token header")
        self._segment(parts[1], "token payload")  # bad or deep JSON is a 400 before pyjwt parses it
        if not isinstance(header, dict):
            raise RequestError("token header is not a JSON object")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none" or alg not in self.algorithms:
            raise Unauthenticated(f"token algorithm {str(alg)[:20]!r} is not accepted (accepted: {self.algorithms})")
        key = self._key_for(alg, header.get("kid"))
        try:
            payload = jwt.decode(
                token, key, algorithms=[alg], options=self._options,
                audience=self.audience, issuer=self.issuer, leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token audience is not this service") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {type(exc).__name__}") from None
        except RecursionError:
            raise RequestError("token JSON nests too deeply") from None
        claims = {name: payload[name] for name in self.claim_names if name in payload}
        role = None
        if self.role_claim and self.role_claim in payload:
            role = payload[self.role_claim]
            if not isinstance(role, str) or role not in self.roles:
                raise Unauthenticated(f"token role is not one of the allowed db_roles {sorted(self.roles)}")
        exp = payload.get("exp")
        return Identity(claims=claims, headers={}, role=role, scope=encode_scope(claims, {}, role),
                        expires=float(exp) if isinstance(exp, (int, float)) else float("inf"))

    def _segment(self, segment: str, what: str) -> Any:
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError):
            raise Unauthenticated(f"{what} is not base64url") from None
        try:
            return jsondepth.decode(_decode_json, raw, what, self.max_depth)
        except msgspec.DecodeError as exc:
            raise RequestError(f"{what} is not valid JSON: {exc}") from None

    def _key_for(self, alg: str, kid: Any) -> Any:
        if alg.startswith("HS"):
            return self._secret
        if kid is not None and kid in self._keys:
            return self._keys[kid]
        if None in self._keys:
            return self._keys[None]
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise Unauthenticated(f"token key id {str(kid)[:40]!r} is not in the configured JWKS")


def _load_public_keys(path: str) -> dict[str | None, Any]:
    """A PEM public key (kid None) or a JWKS file ({"keys": [...]}, by kid)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"jwt_public_keys: cannot read {path}: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            keyset = jwt.PyJWKSet.from_json(text)
        except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as exc:
            raise ConfigError(f"jwt_public_keys: {path} is not a usable JWKS: {exc}") from None
        return {key.key_id: key.key for key in keyset.keys}
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return {None: load_pem_public_key(text.encode())}
    except ValueError as exc:
        raise ConfigError(f"jwt_public_keys: {path} is not a PEM public key: {exc}") from None


def check_private_types(settings: Settings, private_types: list[str]) -> None:
    """The start refuses private types when no verified identity is configured."""
    if private_types and not settings.identity_configured():
        raise ConfigError(
            f"the schema has private types {sorted(private_types)} but no verified identity is configured: "
            "set jwt_secret (FRAISESHM_JWT_SECRET) or jwt_public_keys, or scope_header with scope_header_trusted"
        )


__all__ = ["ANONYMOUS", "Identity", "Verifier", "check_private_types", "encode_scope"]
