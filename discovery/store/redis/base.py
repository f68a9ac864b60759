"""The Redis connection (one server, a Sentinel-managed primary or a Redis Cluster), the key
layout, Lua plumbing and replicated acknowledgement (``min_replicas``).

Every key the store writes is named here, by :class:`Keys`; docs/redis-keys.md
documents each one (type, TTL, why it exists). The registry and its change feed
share one hash tag, so every registry update is one Lua script on one node and is
atomic on a cluster too; see docs/redis-keys.md for the trade-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AskError, MovedError, NoScriptError, RedisClusterException

from discovery.store.redis.errors import (
    CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    UNREACHABLE,
    fail_fast_retry,
    unavailable,
    unreplicated,
)

log = logging.getLogger("discovery.store.redis")
T = TypeVar("T")

Client = Redis | RedisCluster
Arg = bytes | int | str
Call = tuple[Sequence[bytes], Sequence[Arg]]

#: Store URL schemes: one server, a cluster given by one or more of its nodes, or a primary
#: found through Sentinel (docs/high-availability.md).
SINGLE_SCHEMES = ("redis", "rediss")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES

DEFAULT_NAMESPACE = "discovery"
#: Bumped when the key layout changes incompatibly; a store refuses another layout.
LAYOUT_VERSION = 1
#: The registry is spread over this many hashes per mapping, so each stays a small listpack.
BUCKETS = 1 << 16
PRUNE_INTERVAL = 5.0
MAX_BLOCK_SECONDS = 1.0
DEFAULT_INBOX_TTL_MS = (14 * 86_400 + 3600) * 1000
#: How long a write waits for ``min_replicas`` replicas to confirm it (seconds).
DEFAULT_REPLICA_TIMEOUT = 1.0
#: A cluster's slot map is read again at most this often after a node failed or moved a slot.
SLOT_REFRESH_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a store URL names: a client to make and the namespace of every key.

    ``nodes`` are the cluster's nodes, or the sentinels when ``sentinel_service`` is set.
    ``min_replicas`` and ``replica_timeout`` are None unless the URL sets them.
    """

    cluster: bool
    namespace: str
    url: str = ""
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_service: str = ""
    sentinel_password: str | None = None
    db: int = 0
    min_replicas: int | None = None
    replica_timeout: float | None = None

    def client(self, socket_timeout: float = SOCKET_TIMEOUT) -> tuple[Client, Sentinel | None]:
        """The client, and the Sentinel it asks for the primary (closed with it)."""
        # Fail fast while Redis is down (see errors.py); URL parameters override these.
        if self.sentinel_service:
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(self.nodes),
                sentinel_kwargs={
                    "socket_connect_timeout": CONNECT_TIMEOUT,
                    "socket_timeout": SOCKET_TIMEOUT,
                    "password": self.sentinel_password,
                    "ssl": self.tls,
                },
            )
            primary = sentinel.master_for(
                self.sentinel_service,
                redis_class=Redis,
                db=self.db,
                username=self.username,
                password=self.password,
                ssl=self.tls,
                decode_responses=False,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=socket_timeout,
                retry=fail_fast_retry(),
            )
            return primary, sentinel
        if not self.cluster:
            single = Redis.from_url(
                self.url,
                decode_responses=False,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=socket_timeout,
                retry=fail_fast_retry(),
            )
            return single, None
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
            username=self.username,
            password=self.password,
            ssl=self.tls,
            decode_responses=False,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=socket_timeout,
        )
        return cluster, None


def _replication_options(query: list[tuple[str, str]]) -> tuple[int | None, float | None]:
    """``min_replicas`` (an integer >= 0) and ``replica_timeout_ms`` (>= 1) from a URL query."""
    replicas: int | None = None
    timeout: float | None = None
    for name, value in query:
        if not value.isdigit():
            raise ValueError(f"the redis URL parameter {name} must be a non-negative integer")
        if name == "min_replicas":
            replicas = int(value)
        elif int(value) < 1:
            raise ValueError("the redis URL parameter replica_timeout_ms must be at least 1")
        else:
            timeout = int(value) / 1000
    return replicas, timeout


def _host_list(hosts: str, what: str) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a {what} must be host:port, got {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://[:pw@]host:port/db``, ``rediss://…``, ``redis+cluster://host:port,host:port`` or
    ``redis+sentinel://[user:pw@]host:port,host:port/SERVICE[/DB]`` (the sentinels' addresses).

    Query parameters: ``namespace`` (default ``discovery``) prefixes every key, so several
    deployments can share one Redis; ``min_replicas`` and ``replica_timeout_ms`` ask every
    acknowledged write to be confirmed by that many replicas (docs/high-availability.md);
    ``sentinel_password`` (Sentinel only) authenticates to the sentinels.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not a redis store URL: scheme {parts.scheme!r}")
    namespace, sentinel_password, replication, rest = _query_options(parts.query, parts.scheme)
    if not namespace or any(c in namespace for c in "{}"):
        raise ValueError("the redis namespace must be non-empty and must not contain braces")
    min_replicas, replica_timeout = _replication_options(replication)
    common: dict[str, Any] = {
        "namespace": namespace,
        "min_replicas": min_replicas,
        "replica_timeout": replica_timeout,
    }
    if parts.scheme in SINGLE_SCHEMES:
        if not parts.hostname:
            raise ValueError("a redis store URL needs a host: redis://host:port/db")
        plain = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
        return RedisTarget(cluster=False, url=plain, **common)
    if rest:
        raise ValueError(f"unknown {parts.scheme} URL parameter {rest[0][0]!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    common.update(
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=parts.scheme.startswith("rediss"),
    )
    if parts.scheme in SENTINEL_SCHEMES:
        service, _, db = parts.path.strip("/").partition("/")
        if not service or (db and not db.isdigit()):
            raise ValueError("a sentinel store URL is redis+sentinel://host:port,host:port/SERVICE[/DB]")
        return RedisTarget(
            cluster=False,
            nodes=_host_list(hosts, "sentinel"),
            sentinel_service=unquote(service),
            sentinel_password=sentinel_password,
            db=int(db or 0),
            **common,
        )
    if parts.path not in ("", "/", "/0"):
        raise ValueError("Redis Cluster has only database 0")
    return RedisTarget(cluster=True, nodes=_host_list(hosts, "cluster node"), **common)


def _query_options(
    query: str, scheme: str
) -> tuple[str, str | None, list[tuple[str, str]], list[tuple[str, str]]]:
    """The namespace, the sentinels' password, the replication options and the other
    parameters (passed on to redis-py) of a store URL's query."""
    namespace = DEFAULT_NAMESPACE
    sentinel_password: str | None = None
    replication: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "namespace":
            namespace = value
        elif name in ("min_replicas", "replica_timeout_ms"):
            replication.append((name, value))
        elif name == "sentinel_password" and scheme in SENTINEL_SCHEMES:
            sentinel_password = value
        else:
            rest.append((name, value))
    return namespace, sentinel_password, replication, rest


def user_bucket_suffix(user_id: bytes) -> bytes:
    """The two bytes that end the name of a user's bucket (what the IMPORT script is given)."""
    # SHA-1 because the Lua scripts compute it too (redis.sha1hex); not for security.
    return hashlib.sha1(user_id).digest()[:2]


class Keys:
    """The name of every key (docs/redis-keys.md).

    Registry keys share the hash tag ``{NS}``; keys kept for one user share the tag
    ``{NS:u:USER_ID}``, so multi-key operations on either group stay on one slot.
    """

    def __init__(self, namespace: str) -> None:
        tag = b"{" + namespace.encode() + b"}"
        self.registry_tag = tag
        self.meta = tag + b":meta"
        self.feed = tag + b":feed"
        self.feed_times = tag + b":feedtime"
        #: Private mode: user id -> DISCOVERABLE(1) ENTRY (tag and sealed id; no h, no y).
        self.private = tag + b":pe"
        self._user_bucket = tag + b":u:"
        #: Followed by a watch tag: who watches that contact (the IMPORT script is given these).
        self.watchers_prefix = tag + b":wk:"
        self._key_bucket = tag + b":d:"
        self._user_tag = b"{" + namespace.encode() + b":u:"

    def user_bucket(self, user_id: bytes) -> bytes:
        """The hash holding this user's registry record (user id -> key, flags, feed seq)."""
        return self._user_bucket + user_bucket_suffix(user_id)

    def user_bucket_at(self, index: int) -> bytes:
        return self._user_bucket + index.to_bytes(2, "big")

    def key_bucket(self, directory_key: bytes) -> bytes:
        """The hash marking this directory key as taken (field: the key's last 14 bytes)."""
        return self._key_bucket + directory_key[:2]

    def watches_of(self, user_id: str) -> bytes:
        """The zset of the watch tags a user watches (score: expiry)."""
        return self.registry_tag + b":ww:" + user_id.encode()

    def devices_of(self, user_id: str) -> bytes:
        """The hash of a user's devices (device id -> ACKED:SEEN)."""
        return self.registry_tag + b":dv:" + user_id.encode()

    @property
    def join_signals(self) -> bytes:
        """The stream of join wake-ups (ids of notified users)."""
        return self.registry_tag + b":joins"

    def quota(self, bucket: str) -> bytes:
        """A leaky bucket; ``purpose:USER_ID`` buckets of one user share the tag ``{NS:u:USER_ID}``."""
        purpose, sep, user_id = bucket.partition(":")
        if not sep:
            return self._user_tag[:-2] + b"q:" + bucket.encode() + b"}"
        return self._user_tag + user_id.encode() + b"}:q:" + purpose.encode()


class LuaScript:
    """A Lua script run with EVALSHA, loaded on demand (on every primary of a cluster)."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()


class RedisBase:
    """Owns the client; the mixins add the operations."""

    def __init__(
        self,
        target: RedisTarget,
        *,
        feed_retention: float = 3600.0,
        feed_max_len: int = 1_000_000,
        min_replicas: int = 0,
        replica_timeout: float = DEFAULT_REPLICA_TIMEOUT,
    ) -> None:
        self.target = target
        self.keys = Keys(target.namespace)
        # The store URL's parameters take precedence over the arguments.
        if target.min_replicas is not None:
            min_replicas = target.min_replicas
        if target.replica_timeout is not None:
            replica_timeout = target.replica_timeout
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        if self.min_replicas < 0 or self.replica_timeout <= 0:
            raise ValueError("min_replicas must be >= 0 and replica_timeout > 0")
        # A reply may take as long as WAIT blocks, plus the usual allowance.
        socket_timeout = SOCKET_TIMEOUT + (self.replica_timeout if self.min_replicas else 0.0)
        self._redis: Client
        self._sentinel: Sentinel | None
        self._redis, self._sentinel = target.client(socket_timeout)
        self._last_slot_refresh = 0.0
        self._feed_retention = feed_retention
        self._feed_max_len = feed_max_len
        self._last_prune = 0.0
        self._feed_node_id: bytes | None = None
        # Inbox keys expire this long after their newest event; learnt from the max_age the
        # join service passes on every read (its inbox TTL).
        self._inbox_ttl_ms = DEFAULT_INBOX_TTL_MS
        self._blocked: set[asyncio.Future[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and check (or record) the key layout version."""
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()
        await self._redis.hsetnx(self.keys.meta, "layout", LAYOUT_VERSION)
        layout = await self._redis.hget(self.keys.meta, "layout")
        if layout is None or int(layout) != LAYOUT_VERSION:
            raise RuntimeError(
                f"the redis namespace holds key layout {layout!r}; this version expects {LAYOUT_VERSION}"
            )

    async def ping(self) -> None:
        await self._redis.ping()

    async def write_ready(self) -> None:
        """The no-op write of every registry write (the fence) and, with ``min_replicas``, its
        WAIT: fails on a replica (READONLY), without a primary, or with too few replicas."""
        if not self.min_replicas:
            await self._redis.hincrby(self.keys.meta, "fence", 0)
            return
        await self._confirmed(self.keys.meta, [])

    async def close(self) -> None:
        if self._blocked:
            await asyncio.wait(self._blocked, timeout=MAX_BLOCK_SECONDS + 1)
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def _blocking(self, command: Awaitable[T]) -> T:
        """Run a blocking read (XREAD BLOCK) so that cancelling the caller takes effect at once.

        redis-py can swallow a cancellation that arrives while a blocking command waits
        for its reply; the command runs in a task of its own, which ends by itself when
        its block time (at most MAX_BLOCK_SECONDS) is over.
        """
        task = asyncio.ensure_future(command)
        self._blocked.add(task)
        task.add_done_callback(self._blocked.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            raise

    # -- Lua ------------------------------------------------------------------------------------

    async def _eval(self, script: LuaScript, keys: Sequence[bytes], args: Sequence[Arg]) -> Any:
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(script.source)
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)

    async def _eval_many(self, script: LuaScript, calls: Sequence[Call]) -> list[Any]:
        """Run the script once per call in one pipeline (one round trip to the node)."""
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for i in pending:
                keys, args = calls[i]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not missing:
                break
            await self._redis.script_load(script.source)
            pending = missing
        return results

    # -- replicated acknowledgement -------------------------------------------------------------

    async def _write(self, script: LuaScript, keys: Sequence[bytes], args: Sequence[Arg]) -> Any:
        """Run a script whose effect the caller sees acknowledged (see :meth:`_confirmed`)."""
        if not self.min_replicas:
            return await self._eval(script, keys, args)
        (reply,) = await self._write_many(script, [(keys, args)])
        return reply

    async def _write_many(self, script: LuaScript, calls: Sequence[Call]) -> list[Any]:
        """:meth:`_eval_many` for writes; every call's first key must be on one slot."""
        if not self.min_replicas:
            return await self._eval_many(script, calls)
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        route = calls[0][0][0]
        for attempt in range(2):
            commands = [
                ("EVALSHA", script.sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in pending
            ]
            replies = await self._confirmed(route, commands)
            missing = []
            for i, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                else:
                    results[i] = reply
            if not missing:
                break
            await self._on_node(route, [("SCRIPT", "LOAD", script.source)])
            pending = missing
        return results

    async def _confirmed(self, route: bytes, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """Run ``commands`` on the primary of ``route``'s slot, then WAIT on the same connection
        until ``min_replicas`` replicas have everything that primary holds: raise Unavailable
        when they do not confirm within ``replica_timeout``.

        Registry writes are followed by a no-op write to ``{NS}:meta`` (field ``fence``): WAIT
        waits for the connection's last write, and a retried script that finds its work done
        writes nothing, yet the caller must not hear "done" before the first attempt's write
        is on the replicas. Replies that are errors are returned, except redirections (the
        slot map is read again and the commands are sent again: they did not run).
        """
        tail: list[tuple[Arg, ...]] = []
        if route == self.keys.meta:
            tail.append(("HINCRBY", self.keys.meta, "fence", 0))
        tail.append(("WAIT", self.min_replicas, max(1, round(self.replica_timeout * 1000))))
        for _ in range(3):
            replies = await self._on_node(route, [*commands, *tail])
            if any(isinstance(reply, MovedError | AskError) for reply in replies):
                await self._refresh_slots(force=True)
                continue
            for reply in replies[len(commands) :]:
                if isinstance(reply, Exception):
                    raise reply
            acked = int(replies[-1])
            if acked < self.min_replicas:
                raise unreplicated(acked, self.min_replicas)
            for reply in replies[: len(commands)]:
                if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                    raise reply
            return replies[: len(commands)]
        raise unavailable()

    async def _on_node(self, route: bytes, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """Send ``commands`` in one pipeline on one connection to the primary of ``route``'s slot;
        the replies, errors included. A cluster's slot map is refreshed when the node fails."""
        if not isinstance(self._redis, RedisCluster):
            pipe = self._redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)
        # Not a ClusterPipeline: it routes each command by itself (WAIT would go to every
        # primary) and, after a connection error, sends them again without their target.
        node = self._redis.get_node_from_key(route)  # type: ignore[arg-type]
        assert node is not None
        stack = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
        try:
            await node.execute_pipeline(stack)
        except UNREACHABLE:
            await self._refresh_slots()
            raise
        return [command.result for command in stack]

    async def _refresh_slots(self, force: bool = False) -> None:
        """Read a cluster's slot map again (a primary failed or a slot moved), at most every
        SLOT_REFRESH_INTERVAL unless forced; a failure leaves the old map in place."""
        if not isinstance(self._redis, RedisCluster):
            return
        now = time.monotonic()
        if not force and now - self._last_slot_refresh < SLOT_REFRESH_INTERVAL:
            return
        self._last_slot_refresh = now
        with contextlib.suppress(*UNREACHABLE, RedisClusterException):
            await self._redis.nodes_manager.initialize()

    async def _scan_registry_node(self, pattern: bytes, count: int) -> AsyncIterator[list[bytes]]:
        """SCAN the node that holds the registry's slot for keys matching ``pattern``, in pages."""
        node = (
            self._redis.get_node_from_key(self.keys.meta.decode())
            if isinstance(self._redis, RedisCluster)
            else None
        )
        cursor = 0
        while True:
            if node is not None:
                reply = await self._redis.execute_command(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", count, target_nodes=node
                )
            else:
                reply = await self._redis.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", count)
            raw_cursor, found = reply
            if isinstance(raw_cursor, dict):  # a cluster names the node of each cursor
                (raw_cursor,) = raw_cursor.values()
            cursor = int(raw_cursor)
            yield found
            if cursor == 0:
                return

    # -- change feed plumbing -------------------------------------------------------------------

    async def _feed_node_identity(self) -> bytes:
        """The run id of the Redis process that holds the feed.

        It changes when that process restarts or a replica takes over; either may have
        lost the last acknowledged writes, so followers must reload rather than trust
        their cursor.
        """
        if isinstance(self._redis, RedisCluster):
            node = self._redis.get_node_from_key(self.keys.feed.decode())
            info = await self._redis.info("server", target_nodes=node)
        else:
            info = await self._redis.info("server")
        if isinstance(info, dict) and "run_id" not in info and len(info) == 1:
            info = next(iter(info.values()))
        return str(info["run_id"]).encode()

    async def _maybe_prune_feed(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL:
            return
        self._last_prune = now
        await self._eval(
            PRUNE_FEED,
            [self.keys.meta, self.keys.feed, self.keys.feed_times],
            [repr(float(self._feed_retention)), self._feed_max_len],
        )


# The feed holds one entry per change, with explicit ids "SEQ-0", so the cursor is SEQ.
# Entries older than the retention or beyond the length cap are trimmed; ``floor`` records
# the newest trimmed seq, so a follower whose cursor is older knows it must reload.
# Checkpoints (time -> head seq) in a sorted set tell which entries are older than the
# retention, since the ids carry no time.
PRUNE_FEED = LuaScript(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
redis.call('ZADD', KEYS[3], 'NX', now, head)
local cutoff = now - tonumber(ARGV[1])
local floor = head - tonumber(ARGV[2])
local old = redis.call('ZREVRANGEBYSCORE', KEYS[3], cutoff, '-inf', 'LIMIT', 0, 1)
if old[1] then floor = math.max(floor, tonumber(old[1])) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
local current = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
if floor > current then
  redis.call('XTRIM', KEYS[2], 'MINID', (floor + 1) .. '-0')
  redis.call('HSET', KEYS[1], 'floor', floor)
end
return floor
"""
)
