"""Errors as a contract (docs/errors.md): every reason the server can emit is declared once, in
proto/discovery/v1/errors.proto, and listed in docs/errors.md; every error of every RPC carries
exactly one ErrorInfo of domain discovery.v1 with its reason, the detail of its code, and the
caller's request id."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.api.errors import internal_status, status_for
from discovery.core import errors as core
from discovery.core.errors import Reason
from discovery.v1 import errors_pb2
from tests.support.error_cases import ERROR_CASES, World, method, run_case
from tests.support.rpc import METHODS, invoke, reason
from tests.support.server import user_metadata

ROOT = Path(__file__).resolve().parent.parent
PROTO = (ROOT / "proto" / "discovery" / "v1" / "errors.proto").read_text()
DOC = (ROOT / "docs" / "errors.md").read_text()
#: Reasons no live case here provokes, and where they are covered instead.
ELSEWHERE = {
    "INVALID_ARGUMENT": "the fallback of an InvalidArgument raised without a finer reason",
    "STORE_UNAVAILABLE": "tests/test_faults.py (a store outage)",
    "DEADLINE_EXCEEDED": "tests/test_deadlines.py",
    "INTERNAL": "internal_status() below",
}


def proto_reasons() -> dict[str, str]:
    """Each ErrorReason value and the status code its comment names first."""
    body = PROTO.split("enum ErrorReason {", 1)[1]
    found = {}
    for comment, name in re.findall(r"((?:\s*//[^\n]*\n)+)\s*([A-Z_]+) = \d+;", body):
        code = re.search(r"//\s*([A-Z_]+)\.", comment)
        found[name] = code.group(1) if code else ""
    return found


def doc_reasons() -> dict[str, str]:
    return dict(re.findall(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \|", DOC, re.MULTILINE))


def test_the_reasons_are_declared_once_and_agree() -> None:
    declared = set(errors_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    assert {r.value for r in Reason} == declared
    assert proto_reasons() == {**doc_reasons(), "ERROR_REASON_UNSPECIFIED": ""}
    for name, code in doc_reasons().items():
        assert code in set(code_pb2.Code.keys()), (name, code)


def test_every_reason_is_emitted_somewhere() -> None:
    """No dead reason: each is named by the server's code (a raise site or a class default)."""
    source = "\n".join(p.read_text() for p in (ROOT / "discovery").rglob("*.py") if "v1" not in p.parts)
    for r in Reason:
        assert f"Reason.{r.name}" in source, r


ERRORS: list[core.DomainError] = [
    core.InvalidArgument.field("f", "bad"),
    core.AlreadyExists("taken", "f", Reason.HASH_TAKEN),
    core.UserNotRegistered(),
    core.QuotaExceeded("over", "user:u", "at most 1", 2.0),
    core.Unauthenticated("no"),
    core.PermissionDenied("no"),
    core.Unavailable("down"),
    core.DeadlineExceeded("late"),
    core.DomainError("anything else"),
]


def infos_of(status: grpc.Status) -> list[error_details_pb2.ErrorInfo]:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    infos = []
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return infos


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_status_has_exactly_one_error_info(error: core.DomainError) -> None:
    status = status_for(error)
    [info] = infos_of(status)
    assert (info.domain, info.reason) == ("discovery.v1", error.reason.value)
    assert doc_reasons()[info.reason] == status.code.name


def test_internal_errors_carry_internal() -> None:
    [info] = infos_of(internal_status())
    assert info.reason == "INTERNAL"


async def test_every_error_case_keeps_the_contract(error_world: World) -> None:
    for case in ERROR_CASES:
        await run_case(error_world, case)
    provoked = {case.reason for case in ERROR_CASES}
    assert provoked | set(ELSEWHERE) == {r.value for r in Reason}
    assert {case.method.rsplit(".", 1)[0] for case in ERROR_CASES} >= {
        m.containing_service.full_name for m in METHODS
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    index=st.integers(0, len(METHODS) - 1),
    payload=st.binary(max_size=200),
    authenticated=st.booleans(),
)
async def test_random_bytes_on_any_rpc_fail_with_one_error_info(
    error_world: World, index: int, payload: bytes, authenticated: bool
) -> None:
    m = METHODS[index]
    metadata = user_metadata("bob") if authenticated else ()
    error = await invoke(error_world.channels["dev"], m, payload, metadata, timeout=5)
    if error is not None and error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
        assert reason(error)  # exactly one ErrorInfo, declared, with the request id
    assert method(m.full_name) is m
