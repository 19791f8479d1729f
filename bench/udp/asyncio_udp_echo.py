#!/usr/bin/env python3
"""asyncio's datagram endpoint as a UDP echo server: the asyncio baseline of bench/udp.

    asyncio_udp_echo.py [--host H] [--port P] [--uvloop]

Keeps the example-server contract of DESIGN.md section 7: the first stdout line is
"listening on udp HOST:PORT" (flushed), every datagram goes back to its sender, and SIGINT or
SIGTERM end it with status 0. --uvloop runs the same protocol on uvloop's event loop (Debian's
python3-uvloop), when it is installed.
"""
import argparse
import asyncio
import signal
import sys


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

    def error_received(self, exc):
        pass  # an ICMP error for one datagram: nothing to do for an echo server


async def main(args):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(args.host, args.port))
    host, port = transport.get_extra_info("sockname")[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on udp {shown}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    transport.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(args))
    sys.exit(0)
