"""ImportBatcher: import rows into stream batches, client-side rejections and position mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.client import CLIENT_INVALID_NUMBER, _common
from discovery.contact_hash import contact_hash
from discovery.v1 import discovery_pb2


def test_import_batcher() -> None:
    batcher = _common.ImportBatcher("DE", batch_size=2)
    sent: list[discovery_pb2.ImportUsersRequest] = []
    rows: list[tuple[str, str | bytes]] = [
        ("u0", "+4915100000000"),
        ("u1", "bad"),
        ("u2", "0151 00000002"),
        ("u3", b"\x07" * 32),
        ("u4", b"short"),
        ("u5", "+4915100000005"),
    ]
    for row in rows:
        request = batcher.add(row)
        if request is not None:
            sent.append(request)
    assert batcher.flush() is None  # the last batch was full and already returned by add()
    assert [[u.user_id for u in r.users] for r in sent] == [["u0", "u2"], ["u3", "u5"]]
    assert sent[0].users[1].contact_hash == contact_hash("+4915100000002")
    assert sent[1].users[0].contact_hash == b"\x07" * 32
    assert batcher.processed == 6

    response = discovery_pb2.ImportUsersResponse(
        imported=3,
        rejected_total=1,
        rejections=[
            discovery_pb2.ImportRejection(
                position=2, user_id="u3", reason=discovery_pb2.REJECTION_REASON_CONTACT_HASH_TAKEN
            )
        ],
    )
    summary = batcher.summary(response)
    assert summary.imported == 3
    assert summary.rejected_total == 3
    assert [(r.position, r.user_id, r.reason) for r in summary.rejections] == [
        (1, "u1", CLIENT_INVALID_NUMBER),
        (3, "u3", "REJECTION_REASON_CONTACT_HASH_TAKEN"),
        (4, "u4", CLIENT_INVALID_NUMBER),
    ]
    assert summary.rejections[0].detail == "not a phone number"
    assert summary.to_dict()["rejections"][1]["reason"] == "REJECTION_REASON_CONTACT_HASH_TAKEN"


def test_import_batcher_rejects_malformed_rows() -> None:
    batcher = _common.ImportBatcher(None, 10)
    with pytest.raises(TypeError):
        batcher.add(("only one",))
    with pytest.raises(TypeError):
        batcher.add((1, "+4915123456789"))
    with pytest.raises(ValueError):
        _common.ImportBatcher(None, 0)


@given(st.lists(st.booleans(), max_size=60))
def test_import_position_mapping(skips: list[bool]) -> None:
    batcher = _common.ImportBatcher(None, 1000)
    for i, skip in enumerate(skips):
        batcher.add((f"u{i}", "bad" if skip else f"+4915100{i:06d}"))
    sent_positions = [i for i, skip in enumerate(skips) if not skip]
    for stream_position, input_position in enumerate(sent_positions):
        assert batcher.input_position(stream_position) == input_position


def test_import_batcher_flushes_partial_batch() -> None:
    batcher = _common.ImportBatcher(None, 4)
    assert batcher.add(("a", "+4915123456789")) is None
    last = batcher.flush()
    assert last is not None and [u.user_id for u in last.users] == ["a"]
    assert batcher.flush() is None
