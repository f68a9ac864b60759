"""api/discover_wire.py reads and writes Discover's messages by hand, exactly as protobuf does.

Requests: any bytes decode to the fields protobuf reads from them, or fail where protobuf fails.
Responses: for any matches, token and request size, the bytes parse as a DiscoverResponse with
the same fields, equal protobuf's serialisation of that message byte for byte, and have the
padded size (``target_size``, or the next multiple of BUCKET when the matches outgrow it).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.api.discover_wire import (
    BUCKET,
    USER_ID_PREFIX,
    DiscoverCall,
    decode_request,
    encode_response,
    target_size,
)
from discovery.core.model import DirectoryMatch
from discovery.index.packed import pack_strings, pack_varints, varint
from discovery.v1 import discovery_pb2 as pb

user_ids = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 128)


def match_of(positions: list[int], ids: list[str], token: bytes, checked: int) -> DirectoryMatch:
    at = np.array(positions, dtype=np.uint32)
    return DirectoryMatch(
        at, pack_varints(at), pack_strings(ids, USER_ID_PREFIX), token, checked, USER_ID_PREFIX
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(user_ids, max_size=60),
    st.binary(max_size=60),
    st.integers(min_value=0, max_value=2000),
    st.randoms(use_true_random=False),
)
def test_the_bytes_are_the_message(ids: list[str], token: bytes, extra: int, rng: random.Random) -> None:
    checked = len(ids) + extra
    positions = sorted(rng.sample(range(checked), len(ids)))
    raw = encode_response(match_of(positions, ids, token, checked))
    parsed = pb.DiscoverResponse.FromString(raw)
    assert list(parsed.match_indices) == positions
    assert list(parsed.match_user_ids) == ids
    assert parsed.token == token
    assert set(parsed.padding) <= {0}
    assert raw == parsed.SerializeToString()  # canonical: what protobuf itself writes
    target = target_size(checked)
    assert len(raw) == target or (len(raw) > target and len(raw) % BUCKET == 0)


def test_sizes_depend_on_the_request_alone() -> None:
    sizes = {
        len(encode_response(match_of(list(range(k)), [f"user-{i:08d}" for i in range(k)], bytes(41), 1000)))
        for k in (0, 1, 10, 450, 1000)
    }
    assert sizes == {target_size(1000)}


def test_an_empty_answer_is_padded_too() -> None:
    raw = encode_response(DirectoryMatch(np.empty(0, dtype=np.uint32), checked=3))
    assert len(raw) == target_size(3)
    assert pb.DiscoverResponse.FromString(raw).match_user_ids == []


def test_ids_packed_behind_another_prefix_are_refused() -> None:
    at = np.array([0], dtype=np.uint32)
    with pytest.raises(ValueError, match="match_user_ids"):
        encode_response(DirectoryMatch(at, pack_varints(at), pack_strings(["a"]), b"", 1, b""))


def protobuf_reads(data: bytes) -> DiscoverCall | None:
    try:
        message = pb.DiscoverRequest.FromString(data)
    except DecodeError:
        return None
    return DiscoverCall(message.contact_hashes, message.previous_token, message.previous_contact_hashes)


def decoded(data: bytes) -> DiscoverCall | None:
    try:
        return decode_request(data)
    except DecodeError:
        return None


def varint_bytes(value: int) -> bytes:
    return pb.DiscoverRequest(contact_hashes=bytes(value)).SerializeToString()[1 : -value or None]


# Records of a request: the three fields, an unknown field, another wire type, an overlong length.
records = st.one_of(
    st.tuples(st.sampled_from([0x0A, 0x12, 0x1A]), st.binary(max_size=300)).map(
        lambda kb: bytes([kb[0]]) + varint(len(kb[1])) + kb[1]
    ),
    st.binary(max_size=20).map(lambda b: b"\x22" + bytes([len(b)]) + b),  # unknown field 4
    st.integers(0, 2**40).map(lambda v: b"\x08" + varint(v)),  # a varint where bytes are due
    st.binary(max_size=5).map(lambda b: b"\x0a\x85\x80\x80\x80\x80\x00" + b[:5].ljust(5, b"x")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(records, max_size=6))
def test_requests_decode_as_protobuf_decodes_them(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert decoded(data) == protobuf_reads(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_fails_where_protobuf_fails(data: bytes) -> None:
    assert decoded(data) == protobuf_reads(data)


@given(st.lists(records, min_size=1, max_size=4), st.data())
def test_truncated_requests_fail_where_protobuf_fails(parts: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(parts)
    cut = data.draw(st.integers(0, len(whole)))
    assert decoded(whole[:cut]) == protobuf_reads(whole[:cut])


def test_the_canonical_request_is_read_by_hand() -> None:
    message = pb.DiscoverRequest(contact_hashes=bytes(range(64)), previous_token=b"t" * 41)
    assert decode_request(message.SerializeToString()) == DiscoverCall(bytes(range(64)), b"t" * 41, b"")
