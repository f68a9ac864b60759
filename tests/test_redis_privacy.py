"""The privacy workload on a real Redis Cluster: no number and no contact hash in any key or value.

Every key on every node is read back (SCAN + DUMP, and each value in its own type's form:
GET, HGETALL, XRANGE, ZRANGE, SMEMBERS) and scanned, as are the logs.
"""

from __future__ import annotations

import io

from tests.support.privacy_scan import Needles, find_leaks, scan_tree
from tests.support.redis_fixtures import RedisClusterProcesses, dump_everything
from tests.support.server import StartServer
from tests.test_privacy_at_rest import privacy_workload


async def test_no_number_or_hash_in_redis_cluster(
    start_server: StartServer,
    redis_cluster_url: str,
    redis_cluster_session: RedisClusterProcesses,
    log_capture: io.StringIO,
) -> None:
    server = await start_server(store=redis_cluster_url)
    population = await privacy_workload(server)
    needles = Needles.of(population)
    clients = [node.client() for node in redis_cluster_session.nodes]
    try:
        await server.stop(grace=0.5)
        dumped = dump_everything(clients)
        assert len(dumped) > 100_000, "the workload should have left data in redis"
        assert find_leaks(dumped, needles) == []
    finally:
        for client in clients:
            client.close()
    assert scan_tree(server.config.data_dir, needles) == {}
    assert find_leaks(log_capture.getvalue().encode(), needles) == []
