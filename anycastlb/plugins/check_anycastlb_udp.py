#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""A UDP service answers: send one datagram, wait for any reply (or one containing --expect).

OK on a reply, CRITICAL on ICMP port unreachable (refused) or no reply within the
timeout. (monitoring-plugins' check_udp needs an expect string and races its own
read; a KDC, our anycast UDP service, answers any datagram it cannot parse with a
KRB-ERROR, so "any reply" is an honest liveness check.)
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


def probe(host: str, port: int, payload: bytes, timeout: float, expect: bytes = b"") -> tuple[int, str]:
    """Send ``payload`` to ``host:port``; the plugin state and line."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        return UNKNOWN, f"UNKNOWN: cannot resolve {host}: {exc}"
    start = time.monotonic()
    with socket.socket(info[0], socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(info[4])
            s.send(payload)
            data = s.recv(65535)
        except ConnectionRefusedError:
            return CRITICAL, f"CRITICAL: {host} port {port}/udp refused (ICMP port unreachable)"
        except socket.timeout:
            return CRITICAL, f"CRITICAL: no answer from {host} port {port}/udp in {timeout:g} s"
        except OSError as exc:
            return CRITICAL, f"CRITICAL: {host} port {port}/udp: {exc.strerror or exc}"
    took = time.monotonic() - start
    perf = f"time={took:.6f}s;;;0;{timeout:g}"
    if expect and expect not in data:
        return WARNING, f"WARNING: {host} port {port}/udp answered {len(data)} bytes without the expected string | {perf}"
    return OK, f"OK: {host} port {port}/udp answered {len(data)} bytes in {took * 1000:.1f} ms | {perf}"


def main(argv: list[str] | None = None) -> int:
    """Run the check; print one plugin line; return the plugin exit code."""
    p = argparse.ArgumentParser(prog="check_anycastlb_udp", description=__doc__.split("\n\n")[0])
    p.add_argument("-H", "--host", required=True)
    p.add_argument("-p", "--port", type=int, required=True)
    p.add_argument("-s", "--send", default="anycastlb-probe")
    p.add_argument("-e", "--expect", default="")
    p.add_argument("-t", "--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    state, line = probe(args.host, args.port, args.send.encode(), args.timeout, args.expect.encode())
    print(line)
    return state


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
