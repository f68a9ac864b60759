"""Options declared beside the fields they set: a default, a help text and a check.

A field made with :func:`option` is a server option: ``discovery.config`` turns it into the
flag ``--name`` and the variable ``DISCOVERY_NAME``, where ``name`` is the field's own name
unless the declaration gives another (the domain's policies keep short field names, the
flags keep theirs). A dataclass that declares options calls :func:`check_options` in
``__post_init__``, so a bad value is refused where the object is built, with a message
naming the flag (dataclasses derived from :class:`Options` do). Fields declared without
:func:`option` are tuning knobs, not options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields
from typing import Any, TypeVar, overload

T = TypeVar("T")

#: A check of one option's value: raises ValueError with a message naming ``flag``.
Check = Callable[[str, Any], None]


def positive(flag: str, value: Any) -> None:
    if not value > 0:
        raise ValueError(f"{flag} must be positive, not {value!r}")


def non_negative(flag: str, value: Any) -> None:
    if not value >= 0:
        raise ValueError(f"{flag} must be 0 or more, not {value!r}")


def between(low: float, high: float) -> Check:
    def check(flag: str, value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"{flag} must be between {low:g} and {high:g}, not {value!r}")

    return check


def one_of(choices: tuple[str, ...], *, upper: bool = False, what: str = "") -> Check:
    def check(flag: str, value: Any) -> None:
        if (value.upper() if upper else value) not in choices:
            raise ValueError(f"{what or 'unknown ' + flag} {value!r}; use one of {', '.join(choices)}")

    return check


@overload
def option(default: T, help: str, *, name: str = "", check: Check | None = None) -> T: ...
@overload
def option(*, factory: Callable[[], T], help: str, name: str = "", check: Check | None = None) -> T: ...
def option(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Any = MISSING,
    name: str = "",
    check: Check | None = None,
) -> Any:
    """A dataclass field that is a server option (``name``: its flag, if not the field's name)."""
    metadata = {"help": help, "name": name, "check": check}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def is_option(f: Field[Any]) -> bool:
    return "help" in f.metadata


def option_name(f: Field[Any]) -> str:
    """The option a field declares: the flag without its dashes, with underscores."""
    return str(f.metadata["name"] or f.name)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(instance: Any) -> None:
    """Run the check of every option field of the dataclass ``instance``."""
    for f in fields(instance):
        check = f.metadata.get("check")
        if check is not None:
            check(flag(option_name(f)), getattr(instance, f.name))


class Options:
    """Base of a dataclass of options: its fields are checked when it is built."""

    __slots__ = ()

    def __post_init__(self) -> None:
        check_options(self)
