#!/usr/bin/python3
"""asyncio_echo: an echo server on asyncio streams (asyncio.start_server), the way the asyncio
documentation writes one; with --uvloop the same code runs on uvloop's event loop.

    /usr/bin/python3 asyncio_echo.py [--host IPV4] [--port PORT] [--uvloop]

The example-server contract: the first stdout line is "listening on HOST:PORT"; SIGINT or
SIGTERM exits with status 0 (at once: the kernel closes the connections). asyncio and uvloop
set TCP_NODELAY on every connection themselves; the listen backlog is asyncio's default (100).
"""
import argparse
import asyncio
import os
import signal
import sys


async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except OSError:  # reset by the peer
        pass
    finally:
        writer.close()


async def serve(host, port):
    server = await asyncio.start_server(echo, host, port)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    await server.serve_forever()


def stop(signum, frame):
    sys.stdout.flush()
    os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (python3-uvloop)")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
