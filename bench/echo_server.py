"""The transport's own ceiling: a grpc.aio server that answers every unary call at once.

It runs in its own process like the real server, with the same message size limit,
and answers each request with a fixed response of ``--response-bytes`` (the size of a
real Discover response), without parsing the request or running any interceptor.

    python -m bench.echo_server --response-bytes 9000 --port-file PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

ECHO_METHOD = "/bench.Echo/Echo"
MAX_MESSAGE = 4 * 1024 * 1024


class _EchoHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, response: bytes) -> None:
        async def echo(request: bytes, context: aio.ServicerContext) -> bytes:
            return response

        # No (de)serializers: the request and response stay bytes.
        self._handler = grpc.unary_unary_rpc_method_handler(echo)

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        return self._handler if details.method == ECHO_METHOD else None


async def serve(response_bytes: int, port_file: Path) -> None:
    server = aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_EchoHandler(b"\x00" * response_bytes),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--response-bytes", type=int, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.response_bytes, args.port_file))


if __name__ == "__main__":
    main()
