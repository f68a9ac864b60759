"""Bearer-token (JWT) authentication, and mTLS client certificates for backends.

Client methods need ``authorization: Bearer <JWT>`` signed by the account service. The
token's ``sub`` is the caller; no message and no other header can name another user.
Backend methods need a token whose ``scope`` claim (space separated) holds
``directory:write``, or a client certificate that the server's client CA verified (and,
when configured, whose name is on the backend list).

The verifier accepts exactly one algorithm, the configured one, so ``alg=none`` and
algorithm-confusion tokens (an HS256 token "signed" with a public key) are refused by
PyJWT before any signature is checked. ``exp`` and ``sub`` are required, ``iss`` and
``aud`` checked when configured, with a small leeway for clock skew. Errors never echo
the token.

Verified claims are cached per token (:class:`VerifiedTokens`), so a client's repeated calls
do not pay the signature check each time. An entry lives until the token's own ``exp`` (plus
the leeway, as PyJWT allows) and at most ``cache_seconds``, and the cache holds a bounded
number of tokens: an expired token is refused on time, and a token the account service stops
issuing (a rotated key: restart with the new one) is accepted at most ``cache_seconds`` longer.
Only tokens that verified are cached, in memory; failures are not, so a flood of bad tokens
cannot evict good ones faster than good ones arrive.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.types import JWKDict

from discovery.api.auth import (
    AUTHORIZATION_HEADER,
    DIRECTORY_WRITE_SCOPE,
    Audience,
    AuthContext,
    Principal,
    audience_of,
)
from discovery.core.errors import PermissionDenied, Reason, Unauthenticated
from discovery.core.validation import user_id_problem

ALGORITHMS = ("HS256", "EdDSA", "ES256")
BEARER_PREFIX = "bearer "
MAX_TOKEN_CHARS = 8192
CERT_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")
#: How long a verified token is trusted without checking its signature again, and how many
#: tokens are remembered (about 1 KB each).
TOKEN_CACHE_SECONDS = 30.0
#: A token's verified claims; each use checks the type of what it reads.
Claims = dict[str, object]
TOKEN_CACHE_SIZE = 10_000


def check_algorithm(algorithm: str) -> str:
    """``algorithm`` if the verifier supports it, else ValueError naming those it does."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported JWT algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    return algorithm


class _PreparedKey(Algorithm):
    """The configured algorithm with its one key prepared once. PyJWT prepares the key on every
    decode, and for HS256 that means trying to parse the secret as PEM, SSH and DER keys and
    certificates (about 20 µs a token); the checks and the verification are PyJWT's own."""

    def __init__(self, inner: Algorithm, key: Any) -> None:
        self._inner = inner
        self._key = key
        self._prepared = inner.prepare_key(key)

    def prepare_key(self, key: Any) -> Any:
        return self._prepared if key is self._key else self._inner.prepare_key(key)

    def sign(self, msg: bytes, key: Any) -> bytes:
        return self._inner.sign(msg, key)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        return self._inner.verify(msg, key, sig)

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("verification only")

    @staticmethod
    def from_jwk(jwk: str | JWKDict) -> Any:
        raise NotImplementedError("verification only")


def _decoder(algorithm: str, key: Any) -> jwt.PyJWT:
    """A PyJWT decoder of its own whose ``algorithm`` has ``key`` prepared once (PyJWT keeps its
    algorithms on its JWS object; without one, or for a key PyJWT refuses, which it then refuses
    on every token as before, the plain decoder)."""
    decoder = jwt.PyJWT()
    jws = getattr(decoder, "_jws", None)
    if isinstance(jws, jwt.PyJWS):
        try:
            prepared = _PreparedKey(get_default_algorithms()[algorithm], key)
        except Exception:
            return decoder
        jws.unregister_algorithm(algorithm)
        jws.register_algorithm(algorithm, prepared)
    return decoder


class VerifiedTokens:
    """A bounded cache of verified claims: token -> (claims, trusted until), least recent first."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Claims, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> float:
        return self._clock()

    def get(self, token: str) -> Claims | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        claims, until = entry
        if self._clock() >= until:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return claims

    def put(self, token: str, claims: Claims, until: float) -> None:
        if self.size <= 0 or until <= self._clock():
            return
        self._entries[token] = (claims, until)
        self._entries.move_to_end(token)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class JwtVerifier:
    """Verifies tokens of the account service with one configured algorithm and key."""

    algorithm: str
    key: Any  # HS256: the shared secret (bytes); EdDSA/ES256: the public key
    issuer: str = ""
    audience: str = ""
    leeway: float = 5.0
    cache_seconds: float = TOKEN_CACHE_SECONDS
    cache: VerifiedTokens = field(default_factory=VerifiedTokens, compare=False)
    _decoder: jwt.PyJWT = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_algorithm(self.algorithm)
        object.__setattr__(self, "_decoder", _decoder(self.algorithm, self.key))

    def claims(self, token: str) -> Claims:
        """The verified claims of ``token``, or Unauthenticated (which never quotes the token)."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        claims = self._verify(token)
        expires = claims["exp"]
        if isinstance(expires, int | float) and self.cache_seconds > 0:
            now = self.cache.now()
            self.cache.put(token, claims, min(float(expires) + self.leeway, now + self.cache_seconds))
        return claims

    def _verify(self, token: str) -> Claims:
        required = ["exp", "sub"] + (["iss"] if self.issuer else []) + (["aud"] if self.audience else [])
        try:
            claims: Claims = self._decoder.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                issuer=self.issuer or None,
                audience=self.audience or None,
                leeway=self.leeway,
                options={"require": required, "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the bearer token has expired", Reason.TOKEN_EXPIRED) from None
        except Exception:
            # PyJWT raises InvalidTokenError subclasses; anything else on hostile input is
            # refused the same way rather than becoming INTERNAL.
            raise Unauthenticated("the bearer token is not valid", Reason.TOKEN_INVALID) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            # Every caller has a name: a backend's is logged, a client's is the user id.
            raise Unauthenticated("the token's sub claim is empty", Reason.SUBJECT_INVALID)
        return claims


def bearer_token(metadata: Mapping[str, str | bytes]) -> str | None:
    """The token of an ``authorization: Bearer`` header; None when there is no such header."""
    raw = metadata.get(AUTHORIZATION_HEADER)
    if raw is None:
        return None
    value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if len(value) > MAX_TOKEN_CHARS + len(BEARER_PREFIX):
        raise Unauthenticated("the authorization header is too long", Reason.CREDENTIALS_MALFORMED)
    if value[: len(BEARER_PREFIX)].lower() != BEARER_PREFIX:
        raise Unauthenticated(
            "the authorization header must be 'Bearer <token>'", Reason.CREDENTIALS_MALFORMED
        )
    token = value[len(BEARER_PREFIX) :].strip()
    if not token:
        raise Unauthenticated("the authorization header holds no token", Reason.CREDENTIALS_MALFORMED)
    return token


def scopes_of(claims: Mapping[str, object]) -> frozenset[str]:
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise Unauthenticated(
            "the token's scope claim must be a space-separated string", Reason.TOKEN_INVALID
        )
    return frozenset(scope.split())


def certificate_names(auth_context: AuthContext) -> frozenset[str]:
    """The subject names (CN and SANs) of the peer's verified client certificate."""
    names: set[str] = set()
    for key in CERT_NAME_KEYS:
        for value in auth_context.get(key, ()):
            names.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return frozenset(names)


class JwtAuthenticator:
    """The production authenticator; see the module docstring.

    ``client_certificates`` is true only when the server verifies client certificates
    against a client CA: the transport then fills the auth context with the verified
    certificate's names, and only then may a certificate stand in for a backend token.
    An empty ``backend_names`` lets every verified certificate act as a backend.
    """

    def __init__(
        self,
        verifier: JwtVerifier,
        *,
        client_certificates: bool = False,
        backend_names: frozenset[str] = frozenset(),
    ) -> None:
        self.verifier = verifier
        self._client_certificates = client_certificates
        self._backend_names = backend_names

    def authenticate(
        self, method: str, metadata: Mapping[str, str | bytes], auth_context: AuthContext
    ) -> Principal:
        audience = audience_of(method)
        if audience is Audience.PUBLIC:
            return Principal(audience)
        token = bearer_token(metadata)
        claims = self.verifier.claims(token) if token is not None else None
        if audience is Audience.BACKEND:
            return self._backend(claims, auth_context)
        if claims is None:
            raise Unauthenticated(
                "client calls need 'authorization: Bearer <token>' metadata", Reason.CREDENTIALS_MISSING
            )
        subject = claims["sub"]
        if not isinstance(subject, str) or user_id_problem(subject) is not None:
            raise Unauthenticated("the token's subject is not a valid user id", Reason.SUBJECT_INVALID)
        return Principal(audience, user_id=subject, scopes=scopes_of(claims))

    def _backend(self, claims: Claims | None, auth_context: AuthContext) -> Principal:
        scopes = set(scopes_of(claims)) if claims is not None else set()
        certified = self._certified_backend(auth_context)
        if certified:
            scopes.add(DIRECTORY_WRITE_SCOPE)
        if claims is None and not certified:
            raise Unauthenticated(
                f"backend calls need a bearer token with the {DIRECTORY_WRITE_SCOPE} scope "
                "or a client certificate",
                Reason.CREDENTIALS_MISSING,
            )
        if DIRECTORY_WRITE_SCOPE not in scopes:
            raise PermissionDenied(f"backend calls need the {DIRECTORY_WRITE_SCOPE} scope")
        return Principal(Audience.BACKEND, scopes=frozenset(scopes))

    def _certified_backend(self, auth_context: AuthContext) -> bool:
        if not self._client_certificates:
            return False
        names = certificate_names(auth_context)
        if not names:
            return False
        return not self._backend_names or bool(names & self._backend_names)
