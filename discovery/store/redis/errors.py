"""Redis outages become :class:`Unavailable`: the caller gets UNAVAILABLE with RetryInfo at
once, a status clients retry, instead of INTERNAL or a call that waits out its deadline.

The client fails fast too (see ``RedisTarget.client``): a refused connection fails at
once, a connection attempt gives up after CONNECT_TIMEOUT, a reply after SOCKET_TIMEOUT
(longer than the longest blocking read), and a dropped connection is retried once, which
covers the pooled connections a Redis restart left behind.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterDownError, ReadOnlyError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from discovery.core.errors import Unavailable

C = TypeVar("C", bound=type)

CONNECT_TIMEOUT = 1.0
#: Every reply comes within this, except that of a blocking read (at most MAX_BLOCK_SECONDS).
SOCKET_TIMEOUT = 3.0
RETRY_AFTER = 1.0
#: Redis unreachable, loading its data set (BusyLoadingError is a ConnectionError), no
#: primary known to Sentinel (MasterNotFoundError is a ConnectionError), a cluster without a
#: master for some slots or whose slot map cannot be read (failing over: redis-py raises
#: RedisClusterException, e.g. SlotNotCoveredError), or a server that became a replica.
UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    RedisClusterException,
)


def fail_fast_retry() -> Retry:
    """One retry after a short pause, for a connection that broke under a command."""
    return Retry(ExponentialWithJitterBackoff(cap=0.1, base=0.01), retries=1)


def unavailable() -> Unavailable:
    return Unavailable("the store cannot be reached; retry shortly", retry_after=RETRY_AFTER)


def unreplicated(confirmed: int, wanted: int) -> Unavailable:
    """A write that fewer than ``min_replicas`` replicas confirmed in time. It may be on the
    primary: every write is safe to retry (see docs/high-availability.md)."""
    return Unavailable(
        f"the store could not confirm the write on {wanted} replica(s) ({confirmed} did); retry shortly",
        retry_after=RETRY_AFTER,
    )


def _coroutine(operation: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(operation)
    async def mapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return await operation(*args, **kwargs)
        except UNREACHABLE as error:
            raise unavailable() from error

    return mapped


def _generator(
    operation: Callable[..., AsyncGenerator[Any, None]],
) -> Callable[..., AsyncGenerator[Any, None]]:
    @functools.wraps(operation)
    async def mapped(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        try:
            async with contextlib.aclosing(operation(*args, **kwargs)) as inner:
                async for item in inner:
                    yield item
        except UNREACHABLE as error:
            raise unavailable() from error

    return mapped


def unavailable_when_unreachable(cls: C) -> C:
    """Class decorator: the public coroutine and async-generator methods of ``cls`` (the Store
    operations) raise :class:`Unavailable` instead of redis-py's connection errors."""
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name), staticmethod | classmethod):
            continue
        if inspect.iscoroutinefunction(member):
            setattr(cls, name, _coroutine(member))
        elif inspect.isasyncgenfunction(member):
            setattr(cls, name, _generator(member))
    return cls
