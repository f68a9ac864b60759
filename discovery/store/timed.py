"""A Store wrapper that times every operation for the metrics, whatever the backend."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from opentelemetry.trace import Tracer
from prometheus_client import Counter, Histogram

from discovery.store.base import Store
from discovery.store.spans import traced_call


class _TimedStore:
    def __init__(self, store: Store, seconds: Histogram, errors: Counter, tracer: Tracer | None) -> None:
        self._store = store
        self._tracer = tracer
        self._seconds = seconds
        self._errors = errors
        self._wrappers: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        wrapper = self._wrappers.get(name)
        if wrapper is not None:
            return wrapper
        attribute = getattr(self._store, name)
        # Waits (feed_wait, ...) block by design; timing them would hide real latency.
        if name.startswith("_") or "wait" in name or not inspect.iscoroutinefunction(attribute):
            return attribute
        wrapper = self._wrappers[name] = self._timed(name, attribute)
        return wrapper

    def _timed(self, name: str, operation: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        seconds = self._seconds.labels(name)
        errors = self._errors.labels(name)
        operation = traced_call(self._tracer, name, operation)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await operation(*args, **kwargs)
            except Exception:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return timed


def timed_store(store: Store, seconds: Histogram, errors: Counter, tracer: Tracer | None = None) -> Store:
    return cast(Store, _TimedStore(store, seconds, errors, tracer))
