"""Test data: realistic numbers in mixed formats, and their hashes."""

from __future__ import annotations

import random

from discovery.core.hashing import contact_hash


def e164_numbers(count: int, seed: int = 1) -> list[str]:
    """Distinct plausible German mobile numbers in E.164."""
    rng = random.Random(seed)
    numbers: set[str] = set()
    while len(numbers) < count:
        numbers.add(f"+49151{rng.randrange(10**7, 10**8)}")
    return sorted(numbers)


def local_formats(e164: str, rng: random.Random) -> str:
    """How the number might appear in an address book (all parse with region DE)."""
    national = "0" + e164[3:]
    return rng.choice(
        [
            e164,
            f"{e164[:3]} {e164[3:6]} {e164[6:]}",
            f"{national[:4]} {national[4:]}",
            f"({national[:4]}) {national[4:7]}-{national[7:]}",
            "00" + e164[1:],
        ]
    )


def hashes(numbers: list[str]) -> list[bytes]:
    return [contact_hash(n) for n in numbers]
