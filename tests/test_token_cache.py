"""Verified bearer tokens are cached, bounded in size and time; expired tokens are still refused on time."""

from __future__ import annotations

import time

import jwt
import pytest

from discovery.api.jwt_auth import JwtVerifier, VerifiedTokens
from discovery.core.errors import Unauthenticated

SECRET = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def token(exp: float, sub: str = "alice", key: bytes = SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(exp)}, key, algorithm="HS256")


def test_the_cache_is_bounded_and_forgets_the_least_recent() -> None:
    clock = Clock()
    cache = VerifiedTokens(size=3, clock=clock)
    for name in "abcd":
        cache.put(name, {"sub": name}, clock.now + 10)
    assert len(cache) == 3
    assert cache.get("a") is None
    assert cache.get("b") == {"sub": "b"}  # b is now the most recent
    cache.put("e", {"sub": "e"}, clock.now + 10)
    assert cache.get("c") is None
    assert cache.get("b") is not None


def test_entries_end_at_their_deadline() -> None:
    clock = Clock()
    cache = VerifiedTokens(clock=clock)
    cache.put("t", {"sub": "t"}, clock.now + 5)
    clock.now += 4.9
    assert cache.get("t") is not None
    clock.now += 0.2
    assert cache.get("t") is None
    assert len(cache) == 0
    cache.put("late", {"sub": "late"}, clock.now - 1)  # already past: never stored
    assert len(cache) == 0


def test_a_verified_token_is_served_from_the_cache_until_at_most_cache_seconds() -> None:
    clock = Clock()
    clock.now = time.time()
    verifier = JwtVerifier("HS256", SECRET, cache_seconds=30, cache=VerifiedTokens(clock=clock))
    good = token(time.time() + 3600)
    assert verifier.claims(good)["sub"] == "alice"
    assert len(verifier.cache) == 1
    clock.now += 29
    assert verifier.cache.get(good) is not None
    clock.now += 2
    assert verifier.cache.get(good) is None  # checked again after cache_seconds


def test_an_expired_token_is_refused_on_time_even_when_it_was_cached() -> None:
    verifier = JwtVerifier("HS256", SECRET, leeway=0)
    expires = int(time.time()) + 2
    short = token(expires)
    assert verifier.claims(short)["sub"] == "alice"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            verifier.claims(short)
        except Unauthenticated as error:
            assert "expired" in str(error)
            break
        time.sleep(0.05)
    else:
        pytest.fail("the expired token was still accepted")
    refused_at = time.time()
    assert expires <= refused_at < expires + 1  # refused at its exp, not a cache lifetime later
    assert verifier.cache.get(short) is None


def test_tokens_that_fail_are_not_cached() -> None:
    verifier = JwtVerifier("HS256", SECRET)
    forged = token(time.time() + 3600, key=b"x" * 32)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            verifier.claims(forged)
    assert len(verifier.cache) == 0
    with pytest.raises(Unauthenticated):
        verifier.claims(token(time.time() - 60))
    assert len(verifier.cache) == 0


def test_caching_can_be_turned_off() -> None:
    verifier = JwtVerifier("HS256", SECRET, cache_seconds=0)
    verifier.claims(token(time.time() + 3600))
    assert len(verifier.cache) == 0
