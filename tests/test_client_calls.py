"""The SDK call layer without a server: the discover_hashes plan driven by hand, request building
and call metadata."""

from __future__ import annotations

import types
from typing import Any

import pytest

from discovery.client import USER_ID_METADATA_KEY, DiscoverState, InvalidNumberError, _calls, call_metadata
from discovery.contact_hash import contact_hash
from discovery.v1 import discovery_pb2


def _discover_plan(
    hashes: list[bytes], max_per_request: int
) -> tuple[_calls.Plan[list[tuple[int, str]]], Any]:
    """The clients' discover_hashes plan over a stub whose Discover is never called (sans IO)."""
    stub = types.SimpleNamespace(Discover=object())
    return _calls.discover_hashes(stub, DiscoverState(), hashes, max_per_request), stub.Discover  # type: ignore[arg-type]


def test_discover_plan_chunks_and_maps_matches() -> None:
    hashes = [bytes([i]) * 32 for i in range(5)]
    plan, method = _discover_plan(hashes, 2)
    step = _calls.start(plan)
    sent: list[bytes] = []
    answers = [
        discovery_pb2.DiscoverResponse(match_indices=[1], match_user_ids=["b"]),
        discovery_pb2.DiscoverResponse(match_indices=[0, 1], match_user_ids=["c", "d"]),
        discovery_pb2.DiscoverResponse(match_indices=[0], match_user_ids=["e"]),
    ]
    for answer in answers:
        assert isinstance(step, _calls.Call) and step.method is method
        assert isinstance(step.request, discovery_pb2.DiscoverRequest)
        sent.append(step.request.contact_hashes)
        step = _calls.resume(plan, answer)
    assert [len(packed) for packed in sent] == [64, 64, 32]
    assert b"".join(sent) == b"".join(hashes)
    assert step == _calls.Done([(1, "b"), (2, "c"), (3, "d"), (4, "e")])


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (discovery_pb2.DiscoverResponse(match_indices=[2], match_user_ids=["a"]), "out of range"),
        (discovery_pb2.DiscoverResponse(match_indices=[0]), "differ"),
    ],
)
def test_discover_plan_rejects_malformed_responses(
    response: discovery_pb2.DiscoverResponse, match: str
) -> None:
    plan, _ = _discover_plan([bytes([i]) * 32 for i in range(5)], 2)
    assert isinstance(_calls.start(plan), _calls.Call)
    with pytest.raises(ValueError, match=match):
        _calls.resume(plan, response)


def test_to_contact_hash() -> None:
    assert _calls.to_contact_hash("0151 23456789", "DE") == contact_hash("+4915123456789")
    assert _calls.to_contact_hash(b"\x01" * 32, None) == b"\x01" * 32
    with pytest.raises(ValueError):
        _calls.to_contact_hash(b"\x01" * 31, None)
    with pytest.raises(InvalidNumberError):
        _calls.to_contact_hash("0151 23456789", None)


def test_update_settings_mask() -> None:
    request = _calls.update_settings_request(None, False, True)
    assert list(request.update_mask) == ["announce_join", "notify_on_join"]
    assert request.settings.notify_on_join is True
    assert request.settings.announce_join is False
    with pytest.raises(ValueError):
        _calls.update_settings_request(None, None, None)


def test_call_metadata() -> None:
    assert call_metadata(None, None) == ()
    assert call_metadata("bob", "t0k") == ((USER_ID_METADATA_KEY, "bob"), ("authorization", "Bearer t0k"))
    assert USER_ID_METADATA_KEY == "x-discovery-user-id"
