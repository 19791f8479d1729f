#!/usr/bin/python3
"""twisted_echo: the echo server of Twisted's own examples (a Protocol whose dataReceived writes
the data back) on the epoll reactor.

    /usr/bin/python3 twisted_echo.py [--host IPV4] [--port PORT]

The example-server contract: the first stdout line is "listening on HOST:PORT"; SIGINT or
SIGTERM exits with status 0 (at once: the kernel closes the connections). Twisted does not set
TCP_NODELAY by itself; every connection sets it here, as asyncio, uvloop and ringio do. The
listen backlog is 100, asyncio's and ringio's default (Twisted's own is 50).
"""
import argparse
import os
import signal
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import protocol, reactor  # noqa: E402  (after the reactor is chosen)


class Echo(protocol.Protocol):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        self.transport.write(data)


def stop(signum, frame):
    sys.stdout.flush()
    os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    port = reactor.listenTCP(args.port, protocol.Factory.forProtocol(Echo), backlog=100, interface=args.host)
    addr = port.getHost()
    print(f"listening on {addr.host}:{addr.port}", flush=True)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
