"""Hypothesis strategies of phone numbers for the SDK's tests."""

from __future__ import annotations

from hypothesis import strategies as st

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
