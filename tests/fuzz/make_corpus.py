#!/usr/bin/env python3
"""Writes the hand-made seed inputs of tests/fuzz/corpus/ (committed; the build never runs this).

    tests/fuzz/make_corpus.py    # rewrites tests/fuzz/corpus/<target>/seed-*

The formats are described at the top of fuzz_stream_reader.cpp and fuzz_endpoint.cpp.
"""
import os
import socket
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- fuzz_stream_reader ----

def read(n): return bytes([0, n])              # n = 255: the default size
def read_some(k): return bytes([1, k])
def read_exactly(n): return bytes([2, n])      # n >= 250: around the 64 KiB direct threshold
def read_exactly_span(n): return bytes([3, n])
def read_until(sep): return bytes([4, len(sep) - 1]) + sep
def read_line(): return bytes([5])
def check_eof(): return bytes([6])
def read_default(): return bytes([7])


def stream_input(limit, data, chunks, ops):
    """chunks: list of (size 1..128, wait)."""
    out = bytes([(limit - 1) % 64]) + struct.pack(">H", len(data)) + data
    out += bytes([len(chunks)]) + bytes(((size - 1) & 0x7f) | (0x80 if wait else 0) for size, wait in chunks)
    return out + b"".join(ops)


STREAM_SEEDS = {
    "lines": stream_input(64, b"hello\nworld\n", [], [read_line(), read_line(), read_line()]),
    "lines-bytewise": stream_input(16, b"one\ntwo\nthree\n", [(1, True)], [read_line()] * 4),
    "crlf-until": stream_input(32, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", [(5, True), (3, False)],
                               [read_until(b"\r\n"), read_until(b"\r\n"), read_until(b"\r\n"), read_exactly(4)]),
    "exactly": stream_input(8, bytes(range(40)), [(7, True), (13, True)],
                            [read_exactly(3), read_exactly_span(10), read_exactly(0), read_exactly(30)]),
    "exactly-direct": stream_input(8, b"x" * 300, [(100, True)], [read_exactly(2), read_exactly(253)]),
    "span-direct": stream_input(8, b"y" * 200, [(50, True)], [read_exactly_span(250), check_eof()]),
    "line-overrun": stream_input(4, b"aaaaaaaaaa\nb\nccccccccccccc", [(3, True)],
                                 [read_line(), read_line(), read_line(), read_line()]),
    "until-overrun": stream_input(5, b"0123456789--ab--", [(4, True)],
                                  [read_until(b"--"), read(3), read_until(b"--"), read_until(b"--")]),
    "read-some": stream_input(64, b"abcdefghijklmnopqrstuvwxyz", [(2, True), (9, False)],
                              [read_some(1), read_some(5), read_some(0), read_some(100), check_eof()]),
    "empty": stream_input(1, b"", [], [check_eof(), read(10), read_line(), read_exactly(1), read_until(b"\n")]),
    "three-byte-sep": stream_input(20, b"a<=>bb<=>ccc<=>dddd<=", [(6, True), (1, True)],
                                   [read_until(b"<=>")] * 5),
    "many-chunks": stream_input(40, bytes((i * 7 + 10) % 256 for i in range(2000)),
                                [(128, True), (1, False), (77, True), (5, True)],
                                [read(10), read_default(), read_line(), read(255), read_some(50), check_eof()]),
    "mixed-limit-1": stream_input(1, b"\n\n\nab\n\n", [(1, True)],
                                  [read_line(), read_until(b"\n"), read_line(), read_line(), read_until(b"\n\n")]),
}


# ---- fuzz_endpoint ----

def sockaddr_input(length, family_choice, raw):
    return bytes([3]) + struct.pack(">H", length) + bytes([family_choice]) + raw


sin6 = struct.pack("=HHI16sI", socket.AF_INET6, socket.htons(8080), 0, socket.inet_pton(socket.AF_INET6, "fe80::1"), 1)
sin = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(80), socket.inet_pton(socket.AF_INET, "10.1.2.3"))
sun = struct.pack("=H", socket.AF_UNIX) + b"/run/ringio.sock\0"
sun_abstract = struct.pack("=H", socket.AF_UNIX) + b"\0name"

ENDPOINT_SEEDS = {
    "ip-v4": b"\x00127.0.0.1",
    "ip-v6": b"\x00::1",
    "ip-scope-name": b"\x00fe80::1%lo",
    "ip-v4-mapped": b"\x00::ffff:1.2.3.4",
    "ep-v6-scope": b"\x01[fe80::1%1]:80",
    "ep-v4-port": b"\x01127.0.0.1:65535",
    "ep-unix": b"\x01/run/x.sock",
    "ep-abstract": b"\x01@abstract",
    "unix-nul-abstract": b"\x02\x00abs\x00tract",
    "unix-long": b"\x02/tmp/" + b"x" * 102,
    "sockaddr-v6": sockaddr_input(len(sin6), 1, sin6),
    "sockaddr-v4": sockaddr_input(len(sin), 0, sin),
    "sockaddr-unix": sockaddr_input(len(sun), 2, sun),
    "sockaddr-abstract": sockaddr_input(len(sun_abstract), 2, sun_abstract),
    # A filesystem path "@" (as the kernel reports a relative bind): prints like an abstract name.
    "sockaddr-at-path": sockaddr_input(54, 2, b"\x99\x27@"),
    "raw-v6-scope": bytes([4, 1]) + socket.inet_pton(socket.AF_INET6, "ff02::1") + struct.pack(">IH", 1, 53),
    "resolve-bracketed": bytes([5, 0, 0]) + struct.pack(">H", 80) + b"[::1]",
    "resolve-empty-passive": bytes([5, 1, 1]) + struct.pack(">H", 8080),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if name.startswith("seed-"):
            os.remove(os.path.join(d, name))
    for name, data in seeds.items():
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)


write("fuzz_stream_reader", STREAM_SEEDS)
write("fuzz_endpoint", ENDPOINT_SEEDS)
