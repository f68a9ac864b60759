"""Who is calling: the Principal of a call, and the authenticators that establish it.

The servicers never read credentials themselves; they ask for ``current_principal()``,
which the call interceptor sets after the configured Authenticator accepted the call.
Messages therefore never carry the caller's identity.
"""

from __future__ import annotations

import contextvars
import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from discovery.core.errors import PermissionDenied, Reason, Unauthenticated
from discovery.core.validation import user_id_problem
from discovery.v1 import discovery_pb2, joins_pb2, private_pb2

CLIENT_SERVICE = discovery_pb2.DESCRIPTOR.services_by_name["DiscoveryService"].full_name
ADMIN_SERVICE = discovery_pb2.DESCRIPTOR.services_by_name["DirectoryAdminService"].full_name
JOIN_SERVICE = joins_pb2.DESCRIPTOR.services_by_name["JoinNotificationService"].full_name
PRIVATE_SERVICE = private_pb2.DESCRIPTOR.services_by_name["PrivateDiscoveryService"].full_name
#: Every service of the API; health and reflection are outside it. PRIVATE_SERVICE is served too
#: with private mode on.
API_SERVICES = (CLIENT_SERVICE, ADMIN_SERVICE, JOIN_SERVICE)
_PACKAGE_PREFIX = discovery_pb2.DESCRIPTOR.package + "."
DEV_USER_ID_HEADER = "x-discovery-user-id"
AUTHORIZATION_HEADER = "authorization"
#: Headers that name the caller: a request may carry each at most once.
CREDENTIAL_HEADERS = frozenset({AUTHORIZATION_HEADER, DEV_USER_ID_HEADER})
DIRECTORY_WRITE_SCOPE = "directory:write"


class Audience(enum.Enum):
    """Which credentials a method needs."""

    PUBLIC = "public"  # health, reflection
    CLIENT = "client"  # a messenger user
    BACKEND = "backend"  # the account service and other backends


@functools.lru_cache(maxsize=256)
def audience_of(method: str) -> Audience:
    """``/package.Service/Method`` -> the audience of that service (remembered: every call asks)."""
    service = method.lstrip("/").split("/", 1)[0]
    if service == ADMIN_SERVICE:
        return Audience.BACKEND
    if service.startswith(_PACKAGE_PREFIX):
        return Audience.CLIENT
    return Audience.PUBLIC


@dataclass(frozen=True, slots=True)
class Principal:
    audience: Audience
    user_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)


_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("discovery_principal")


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _principal.set(principal)


def current_principal() -> Principal:
    return _principal.get()


def current_user_id() -> str:
    """The calling user's id; only client methods are ever routed here."""
    user_id = current_principal().user_id
    if user_id is None:
        raise Unauthenticated("this method needs a user's credentials", Reason.CREDENTIALS_MISSING)
    return user_id


AuthContext = Mapping[str, Sequence[bytes]]
"""The transport's view of the peer (``ServicerContext.auth_context()``): for a verified
TLS client certificate, ``x509_common_name`` and ``x509_subject_alternative_name``."""


class Authenticator(Protocol):
    def authenticate(
        self, method: str, metadata: Mapping[str, str | bytes], auth_context: AuthContext
    ) -> Principal:
        """The principal of a call, or Unauthenticated / PermissionDenied."""
        ...


class DevAuthenticator:
    """Development only: trusts the ``x-discovery-user-id`` header, and lets backends in.

    Never use it on a network you do not control: the server accepts it (``--auth dev``)
    only on a loopback address, and authenticates with JWTs otherwise (api/jwt_auth.py).
    """

    def authenticate(
        self, method: str, metadata: Mapping[str, str | bytes], auth_context: AuthContext
    ) -> Principal:
        audience = audience_of(method)
        if audience is Audience.PUBLIC:
            return Principal(audience)
        if audience is Audience.BACKEND:
            return Principal(audience, scopes=frozenset({DIRECTORY_WRITE_SCOPE}))
        raw = metadata.get(DEV_USER_ID_HEADER)
        if raw is None:
            raise Unauthenticated(f"missing {DEV_USER_ID_HEADER} metadata", Reason.CREDENTIALS_MISSING)
        user_id = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if user_id_problem(user_id) is not None:
            raise Unauthenticated(f"malformed {DEV_USER_ID_HEADER} metadata", Reason.CREDENTIALS_MALFORMED)
        return Principal(audience, user_id=user_id)


def check_single_credentials(keys: Iterable[str]) -> None:
    """Refuse a request that carries a credential header more than once: a proxy that checks
    only one of them could otherwise be made to let a request run as someone else."""
    seen: set[str] = set()
    for key in keys:
        if key in CREDENTIAL_HEADERS:
            if key in seen:
                raise Unauthenticated(
                    f"the request carries more than one {key} header", Reason.CREDENTIALS_DUPLICATED
                )
            seen.add(key)


def require_scope(principal: Principal, scope: str) -> None:
    if scope not in principal.scopes:
        raise PermissionDenied(f"this method needs the {scope} scope")
