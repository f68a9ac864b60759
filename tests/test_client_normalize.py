"""Unit tests of the client SDK's local steps (no server): normalisation, invalid reasons,
dedupe and mapping back, chunking, contacts/import file parsing, import batching,
error parsing, and the CLI's formatting helpers."""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.client import (
    CLIENT_INVALID_NUMBER,
    DEFAULT_MAX_PER_REQUEST,
    USER_ID_METADATA_KEY,
    DiscoverResult,
    DiscoverState,
    DiscoveryError,
    ImportSummary,
    InvalidEntry,
    InvalidNumberError,
    InvalidReason,
    Match,
    _calls,
    _common,
    call_metadata,
    check_region,
    normalize_number,
    pack_chunks,
    parse_contacts,
    parse_import_rows,
    prepare_address_book,
)
from discovery.client.contacts_file import looks_like_number
from discovery.contact_hash import contact_hash
from discovery.v1 import discovery_pb2

# ---------------------------------------------------------------------------
# normalize_number


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+4915123456789", None, "+4915123456789"),
        ("+49 151 23456789", None, "+4915123456789"),
        ("+49 (151) 234-567-89", None, "+4915123456789"),
        ("  +49 151 23456789\t", None, "+4915123456789"),
        ("0151 23456789", "DE", "+4915123456789"),
        ("0151 23456789", "de", "+4915123456789"),
        ("(0)151 23456789", "DE", "+4915123456789"),
        ("0049 151 23456789", "DE", "+4915123456789"),
        ("+1 650 253 0000", "DE", "+16502530000"),  # an explicit country code wins over the region
        ("(650) 253-0000", "US", "+16502530000"),
        ("tel:+1-650-253-0000", None, "+16502530000"),
        ("+1 650 253 0000 ext. 12", None, "+16502530000"),
        ("\uff0b49 151 23456789", None, "+4915123456789"),  # full-width plus
        ("+44 20 7946 0958", None, "+442079460958"),
        ("1-800-FLOWERS", "US", "+18003569377"),
    ],
)
def test_normalize_valid(raw: str, region: str | None, expected: str) -> None:
    assert normalize_number(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", None, InvalidReason.EMPTY),
        ("   ", "DE", InvalidReason.EMPTY),
        ("hello", None, InvalidReason.NOT_A_NUMBER),
        ("hello", "DE", InvalidReason.NOT_A_NUMBER),
        ("+", None, InvalidReason.NOT_A_NUMBER),
        ("0151 23456789", None, InvalidReason.MISSING_REGION),
        ("12", None, InvalidReason.MISSING_REGION),
        ("+999 1234567", None, InvalidReason.INVALID_COUNTRY_CODE),
        ("+49 1", None, InvalidReason.TOO_SHORT),
        ("+49 12345678901234567890", None, InvalidReason.TOO_LONG),
        ("+1 212 555 01999", None, InvalidReason.TOO_LONG),
        ("+49 000 1234567", None, InvalidReason.INVALID_NUMBER),
        ("+1 555 010 0000", None, InvalidReason.INVALID_NUMBER),
        ("+49 151 234", None, InvalidReason.INVALID_NUMBER),
        ("12", "DE", InvalidReason.INVALID_NUMBER),
    ],
)
def test_normalize_invalid_reasons(raw: str, region: str | None, reason: InvalidReason) -> None:
    with pytest.raises(InvalidNumberError) as info:
        normalize_number(raw, region)
    assert info.value.reason is reason
    assert isinstance(info.value, ValueError)


def test_invalid_number_error_does_not_contain_the_number() -> None:
    with pytest.raises(InvalidNumberError) as info:
        normalize_number("0151 23456789", None)
    assert "23456789" not in str(info.value)
    assert "missing region" in str(info.value)


def test_unknown_region_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown default region"):
        normalize_number("0151 23456789", "XX")
    with pytest.raises(ValueError):
        check_region("Germany")
    assert check_region(" de ") == "DE"
    assert check_region(None) is None
    assert check_region("") is None


@given(st.text(max_size=40))
def test_normalize_never_raises_anything_else(raw: str) -> None:
    try:
        e164 = normalize_number(raw, "DE")
    except InvalidNumberError as exc:
        assert isinstance(exc.reason, InvalidReason)
    else:
        assert e164.startswith("+")
        assert e164[1:].isdigit()
        assert normalize_number(e164, None) == e164  # idempotent


_GERMAN_FORMATS = [
    "+49{a}{b}",
    "+49 {a} {b}",
    "0{a} {b}",
    "0{a}/{b}",
    "(0{a}) {b}",
    "0049 {a} {b}",
    "+49-{a}-{b}",
]


@st.composite
def german_mobile(draw: st.DrawFn) -> tuple[str, str]:
    """A raw entry in some format and its E.164."""
    prefix = draw(st.sampled_from(["151", "152", "157", "159", "176"]))
    digits = draw(st.text(alphabet="0123456789", min_size=8, max_size=8).filter(lambda d: d[0] != "0"))
    fmt = draw(st.sampled_from(_GERMAN_FORMATS))
    return fmt.format(a=prefix, b=digits), f"+49{prefix}{digits}"


@given(german_mobile())
def test_normalize_formats_agree(sample: tuple[str, str]) -> None:
    raw, e164 = sample
    assert normalize_number(raw, "DE") == e164


# ---------------------------------------------------------------------------
# prepare_address_book: dedupe, hash, map back


def test_dedupe_and_map_back() -> None:
    entries = [
        "0151 23456789",
        "junk",
        "+49 151 23456789",
        "+1 650 253 0000",
        "0151 23456789",  # the same raw string twice
        "",
        "+4915123456789",
    ]
    book = prepare_address_book(entries, "DE")
    assert book.numbers == ["+4915123456789", "+16502530000"]
    assert book.hashes == [contact_hash("+4915123456789"), contact_hash("+16502530000")]
    assert book.positions == [[0, 2, 4, 6], [3]]
    assert book.invalid == [
        InvalidEntry("junk", InvalidReason.NOT_A_NUMBER),
        InvalidEntry("", InvalidReason.EMPTY),
    ]
    assert book.entries == entries

    result = book.result([(0, "alice")])
    assert result.matches == [
        Match("0151 23456789", "+4915123456789", "alice"),
        Match("+49 151 23456789", "+4915123456789", "alice"),
        Match("0151 23456789", "+4915123456789", "alice"),
        Match("+4915123456789", "+4915123456789", "alice"),
    ]
    assert result.invalid == book.invalid

    # Matches come back in input order whatever order the server answers in.
    result = book.result([(1, "bob"), (0, "alice")])
    assert [m.entry for m in result.matches] == [entries[i] for i in (0, 2, 3, 4, 6)]
    assert result.matches[2] == Match("+1 650 253 0000", "+16502530000", "bob")


def test_invalid_reason_compares_as_plain_string() -> None:
    book = prepare_address_book(["0151 23456789"], None)
    assert book.invalid == [InvalidEntry("0151 23456789", "missing region")]
    assert book.result([]).to_dict() == {
        "matches": [],
        "invalid": [{"entry": "0151 23456789", "reason": "missing region"}],
    }


def test_result_rejects_out_of_range_index() -> None:
    book = prepare_address_book(["+4915123456789"])
    with pytest.raises(IndexError):
        book.result([(1, "x")])


def test_non_string_entry_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        prepare_address_book(["+4915123456789", 4915123456789])  # type: ignore[list-item]


def test_accepts_any_iterable_once() -> None:
    book = prepare_address_book(iter(["+4915123456789", "+4915123456789"]))
    assert book.positions == [[0, 1]]


_ENTRY = st.one_of(
    german_mobile().map(lambda s: s[0]),
    st.sampled_from(["", "junk", "12", "+999 1", "+49 000 1234567", "0151 23456789"]),
    st.text(max_size=12),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ENTRY, max_size=40), st.integers(min_value=1, max_value=7), st.data())
def test_every_entry_is_accounted_for(entries: list[str], max_per_request: int, data: st.DataObject) -> None:
    book = prepare_address_book(entries, "DE", max_per_request)
    # Each entry is either behind exactly one unique number or invalid, never both, never dropped.
    valid_positions = sorted(p for ps in book.positions for p in ps)
    assert len(valid_positions) == len(set(valid_positions))
    assert len(valid_positions) + len(book.invalid) == len(entries)
    assert len(set(book.numbers)) == len(book.numbers)
    assert all(book.hashes[i] == contact_hash(n) for i, n in enumerate(book.numbers))
    for i, ps in enumerate(book.positions):
        assert ps and all(normalize_number(entries[p], "DE") == book.numbers[i] for p in ps)

    # Chunks: at most max_per_request each, together exactly the hashes in order.
    chunks = book.chunks()
    assert len(chunks) == math.ceil(len(book.hashes) / max_per_request)
    assert b"".join(packed for _, packed in chunks) == b"".join(book.hashes)
    for offset, packed in chunks:
        assert offset % max_per_request == 0
        assert 0 < len(packed) <= 32 * max_per_request

    # Mapping back: exactly the entries whose number matched, in input order.
    matched = data.draw(st.sets(st.sampled_from(range(len(book.numbers))))) if book.numbers else set()
    result = book.result([(i, f"user{i}") for i in sorted(matched)])
    expected = [
        Match(entries[p], book.numbers[i], f"user{i}")
        for p in range(len(entries))
        for i in matched
        if p in book.positions[i]
    ]
    assert result.matches == expected


def test_ten_thousand_entries() -> None:
    # Many entries, with duplicates in other formats; only correctness is checked (benchmarks live in bench/).
    base = [f"+49151{n:08d}" for n in range(10_000, 16_000)]
    entries = base + [f"0151 {n[6:]}" for n in base[:4_000]] + ["junk"] * 10
    book = prepare_address_book(entries, "DE")
    assert len(book.numbers) == 6_000
    assert len(book.invalid) == 10
    chunks = book.chunks()
    assert [len(p) // 32 for _, p in chunks] == [5_000, 1_000]
    result = book.result([(0, "a"), (5_999, "b")])
    assert [m.entry for m in result.matches] == [base[0], base[-1], "0151 " + base[0][6:]]


# ---------------------------------------------------------------------------
# chunking


def test_pack_chunks() -> None:
    hashes = [bytes([i]) * 32 for i in range(7)]
    chunks = pack_chunks(hashes, 3)
    assert [offset for offset, _ in chunks] == [0, 3, 6]
    assert [len(packed) for _, packed in chunks] == [96, 96, 32]
    assert chunks[2][1] == hashes[6]
    assert pack_chunks([], 3) == []
    assert DEFAULT_MAX_PER_REQUEST == 5000
    assert len(pack_chunks(hashes, DEFAULT_MAX_PER_REQUEST)) == 1


def test_pack_chunks_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="position 4"):
        pack_chunks([b"\0" * 32] * 4 + [b"\0" * 31], 3)
    with pytest.raises(ValueError):
        pack_chunks([b"\0" * 32], 0)
    with pytest.raises(ValueError):
        prepare_address_book([], None, 0)


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


# ---------------------------------------------------------------------------
# contacts file parsing


def test_contacts_csv_with_phone_header() -> None:
    text = 'name,phone,notes\n"Doe, John",0151 23456789,x\nBob,+1 650 253 0000,\nJunk,12,\nNoPhone,,\n'
    assert parse_contacts(text) == ["0151 23456789", "+1 650 253 0000", "12"]


@pytest.mark.parametrize("header", ["Phone", "NUMBER", "tel", "Mobile", "Mobile Number", "phone_number"])
def test_contacts_header_names(header: str) -> None:
    text = f"id,{header}\n1,+4915123456789\n2,+16502530000\n"
    assert parse_contacts(text) == ["+4915123456789", "+16502530000"]


def test_contacts_csv_without_header_picks_number_column() -> None:
    text = "Alice,Smith,+4915123456789\nBob,Jones,+16502530000\n"
    assert parse_contacts(text) == ["+4915123456789", "+16502530000"]


def test_contacts_csv_unknown_header_skipped_and_dates_ignored() -> None:
    text = "Given,Birthday,Phone 1 - Value\nAlice,1990-01-31,+4915123456789\nBob,31.01.1990,+16502530000\n"
    assert parse_contacts(text) == ["+4915123456789", "+16502530000"]


def test_contacts_semicolon_and_tab() -> None:
    assert parse_contacts("name;tel\nA;0151 23456789\n") == ["0151 23456789"]
    assert parse_contacts("name\tmobile\nA\t+4915123456789\n") == ["+4915123456789"]


def test_contacts_one_per_line() -> None:
    text = "\ufeff+4915123456789\n\n  0151 23456789  \r\nnot a number\n"
    assert parse_contacts(text) == ["+4915123456789", "0151 23456789", "not a number"]
    assert parse_contacts("phone\n+4915123456789\n") == ["+4915123456789"]
    assert parse_contacts("") == []
    assert parse_contacts("\n \n") == []


def test_contacts_from_file_object() -> None:
    f = io.StringIO("number\n+4915123456789\n+16502530000\n")
    assert parse_contacts(f) == ["+4915123456789", "+16502530000"]


def test_contacts_invalid_values_are_kept_for_reporting() -> None:
    text = "name,phone\nA,call me\nB,+4915123456789\n"
    assert parse_contacts(text) == ["call me", "+4915123456789"]


@given(st.lists(german_mobile(), min_size=1, max_size=20), st.sampled_from([",", ";", "\t"]))
def test_contacts_csv_roundtrip(samples: list[tuple[str, str]], delimiter: str) -> None:
    lines = [f"name{delimiter}phone"] + [f"person {i}{delimiter}{raw}" for i, (raw, _) in enumerate(samples)]
    assert parse_contacts("\n".join(lines)) == [raw.strip() for raw, _ in samples]


def test_looks_like_number() -> None:
    assert looks_like_number("+49 (151) 234-567-89")
    assert looks_like_number("tel:+16502530000")
    assert not looks_like_number("1234")
    assert not looks_like_number("Alice")
    assert not looks_like_number("1990-01-31")
    assert not looks_like_number("flat 12345b")


# ---------------------------------------------------------------------------
# import file parsing


def test_import_rows_with_and_without_header() -> None:
    assert list(parse_import_rows("user_id,number\nalice,+4915123456789\n\nbob,0151 2\n")) == [
        ("alice", "+4915123456789"),
        ("bob", "0151 2"),
    ]
    assert list(parse_import_rows("alice,+4915123456789\nbob,+16502530000\n")) == [
        ("alice", "+4915123456789"),
        ("bob", "+16502530000"),
    ]
    assert list(parse_import_rows("")) == []


def test_import_rows_header_reorders_columns() -> None:
    text = "phone;name;user id\n+4915123456789;Alice;alice\n"
    assert list(parse_import_rows(text)) == [("alice", "+4915123456789")]


def test_import_rows_short_rows_are_not_dropped() -> None:
    assert list(parse_import_rows("alice\n,+4915123456789\n")) == [("alice", ""), ("", "+4915123456789")]


def test_import_rows_are_lazy() -> None:
    def lines() -> Any:
        yield "user_id,number\n"
        yield "alice,+4915123456789\n"
        raise AssertionError("read too far")

    rows = parse_import_rows(lines())
    assert next(rows) == ("alice", "+4915123456789")


# ---------------------------------------------------------------------------
# import batching and position mapping


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


def test_to_contact_hash() -> None:
    assert _calls.to_contact_hash("0151 23456789", "DE") == contact_hash("+4915123456789")
    assert _calls.to_contact_hash(b"\x01" * 32, None) == b"\x01" * 32
    with pytest.raises(ValueError):
        _calls.to_contact_hash(b"\x01" * 31, None)
    with pytest.raises(InvalidNumberError):
        _calls.to_contact_hash("0151 23456789", None)


# ---------------------------------------------------------------------------
# settings, metadata, errors


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


class _FakeCallError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: Any, details: str, trailing: tuple[tuple[str, bytes], ...] = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailing


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_discovery_error_parses_rich_status() -> None:
    delay = duration_pb2.Duration(seconds=2, nanos=500_000_000)
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message="slow down",
        details=[
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="contact_hashes", description="too many"
                        )
                    ]
                )
            ),
            _packed(error_details_pb2.RetryInfo(retry_delay=delay)),
            _packed(error_details_pb2.ErrorInfo(reason="X")),
        ],
    )
    error = DiscoveryError.from_rpc_error(
        _FakeCallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
    )
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "slow down"
    assert error.field_violations == [("contact_hashes", "too many")]
    assert error.retry_after == 2.5
    assert str(error) == "RESOURCE_EXHAUSTED: slow down (contact_hashes: too many) (retry after 2.5s)"


def test_discovery_error_without_details() -> None:
    error = DiscoveryError.from_rpc_error(_FakeCallError(grpc.StatusCode.UNAVAILABLE, "down"))
    assert (error.code, error.message, error.field_violations, error.retry_after) == (
        grpc.StatusCode.UNAVAILABLE,
        "down",
        [],
        None,
    )
    # A rich status that disagrees with the call's code is still read.
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message="other",
        details=[_packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))],
    )
    error = DiscoveryError.from_rpc_error(
        _FakeCallError(
            grpc.StatusCode.UNAVAILABLE, "down", (("grpc-status-details-bin", status.SerializeToString()),)
        )
    )
    assert error.retry_after == 1.0
    assert error.code is grpc.StatusCode.UNAVAILABLE
    # Not a grpc.Call at all.
    error = DiscoveryError.from_rpc_error(grpc.RpcError())
    assert error.code is grpc.StatusCode.UNKNOWN


# ---------------------------------------------------------------------------
# CLI helpers


@pytest.fixture(scope="module")
def cli() -> ModuleType:
    # Loaded from its file so these tests do not depend on the server stack that
    # discovery/cli/__init__.py imports for `serve`.
    path = Path(__file__).resolve().parents[1] / "discovery" / "cli" / "client_commands.py"
    spec = importlib.util.spec_from_file_location("_client_commands_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _parser(cli: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="discovery")
    commands = parser.add_subparsers(dest="command", required=True)
    cli.add_client_commands(commands)
    return parser


def test_cli_registers_commands(cli: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERY_TARGET", "example:1234")
    monkeypatch.setenv("DISCOVERY_USER_ID", "bob")
    parser = _parser(cli)
    args = parser.parse_args(["discover", "--contacts", "-", "--region", "DE", "--json"])
    assert (args.target, args.user_id, args.contacts, args.region, args.json) == (
        "example:1234",
        "bob",
        "-",
        "DE",
        True,
    )
    assert callable(args.func)
    args = parser.parse_args(["settings", "--no-discoverable", "--notify-on-join"])
    assert (args.discoverable, args.announce_join, args.notify_on_join) == (False, None, True)
    args = parser.parse_args(["register", "alice", "+4915123456789", "--target", "h:1"])
    assert (args.user_id, args.number, args.target) == ("alice", "+4915123456789", "h:1")
    for argv in (
        ["unregister", "alice"],
        ["change-number", "a", "1"],
        ["import", "f.csv"],
        ["delete-my-data"],
    ):
        assert callable(parser.parse_args(argv).func)
    assert parser.parse_args(["import", "f.csv", "--batch-size", "10"]).batch_size == 10
    with pytest.raises(SystemExit):
        parser.parse_args(["import", "f.csv", "--batch-size", "0"])


def test_cli_defaults_without_env(cli: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISCOVERY_TARGET", "DISCOVERY_USER_ID", "DISCOVERY_TOKEN", "DISCOVERY_REGION"):
        monkeypatch.delenv(name, raising=False)
    args = _parser(cli).parse_args(["settings"])
    assert (args.target, args.user_id, args.token, args.region) == ("127.0.0.1:50051", None, None, None)


def test_cli_input_errors(cli: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    parser = _parser(cli)
    args = parser.parse_args(["discover", "--contacts", str(tmp_path / "missing.csv")])
    assert args.func(args) == 2
    assert "error: cannot read" in capsys.readouterr().err
    args = parser.parse_args(["register", "alice", "0151 23456789", "--target", "127.0.0.1:1"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "missing region" in err and "23456789" not in err
    args = parser.parse_args(["settings", "--tls-cert", str(tmp_path / "x.pem")])
    assert args.func(args) == 2


def test_cli_service_error_exit_code(cli: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser(cli).parse_args(["settings", "--target", "127.0.0.1:1", "--timeout", "2"])
    assert args.func(args) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_cli_format_discover_result(cli: ModuleType) -> None:
    result = DiscoverResult(
        matches=[
            Match("0151 23456789", "+4915123456789", "alice"),
            Match("+1 650 253 0000", "+16502530000", "bob"),
        ],
        invalid=[
            InvalidEntry("junk", InvalidReason.NOT_A_NUMBER),
            InvalidEntry("12", InvalidReason.MISSING_REGION),
        ],
    )
    text = cli.format_discover_result(result, 4)
    lines = text.splitlines()
    assert lines[0].split() == ["ENTRY", "USER", "ID"]
    assert lines[1].index("alice") == lines[2].index("bob") == lines[0].index("USER ID")
    assert "2 matches among 4 entries" in text
    assert "invalid entries: 2" in text and "'junk': not a phone number" in text
    assert "no" not in cli.format_discover_result(DiscoverResult(), 0).split()


def test_cli_format_import_summary(cli: ModuleType) -> None:
    from discovery.client import ImportRejection

    summary = ImportSummary(
        imported=5,
        unchanged=1,
        rejected_total=4,
        rejections=[
            ImportRejection(0, "a", CLIENT_INVALID_NUMBER, "too short"),
            ImportRejection(3, "b", "REJECTION_REASON_USER_ID_TAKEN"),
        ],
    )
    text = cli.format_import_summary(summary)
    assert "imported:  5" in text and "rejected:  4" in text
    assert "row 1, user 'a': INVALID_NUMBER (too short)" in text
    assert "row 4, user 'b': USER_ID_TAKEN" in text
    assert "2 more not listed" in text


def test_cli_progress_reporter(cli: ModuleType) -> None:
    stream = io.StringIO()
    progress = cli.ProgressReporter(stream, total=None, interval=3600)
    progress(10)
    progress(20)
    progress.finish()
    assert stream.getvalue().splitlines() == ["import: 10 rows processed", "import: 20 rows processed"]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    progress = cli.ProgressReporter(tty, total=4)
    progress(2)
    progress(4)
    progress.finish()
    out = tty.getvalue()
    assert out.startswith("\r[") and "50%" in out and "100% 4/4" in out and out.endswith("\n")


def test_import_batcher_flushes_partial_batch() -> None:
    batcher = _common.ImportBatcher(None, 4)
    assert batcher.add(("a", "+4915123456789")) is None
    last = batcher.flush()
    assert last is not None and [u.user_id for u in last.users] == ["a"]
    assert batcher.flush() is None
