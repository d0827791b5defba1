#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""A UDP service answers: send a datagram, wait for any reply (or one containing --expect).

UDP may lose a datagram; like a Kerberos client, the probe sends it again every
``--retry`` seconds (1 s) until an answer comes or the timeout is over.

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


def probe(host: str, port: int, payload: bytes, timeout: float, expect: bytes = b"",
          retry: float = 1.0) -> tuple[int, str]:
    """Send ``payload`` to ``host:port`` (again every ``retry`` s); the plugin state and line."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        return UNKNOWN, f"UNKNOWN: cannot resolve {host}: {exc}"
    start = time.monotonic()
    deadline = start + timeout
    with socket.socket(info[0], socket.SOCK_DGRAM) as s:
        try:
            s.connect(info[4])
            while True:
                s.send(payload)
                left = deadline - time.monotonic()
                s.settimeout(max(0.001, min(retry, left)) if retry > 0 else max(0.001, left))
                try:
                    data = s.recv(65535)
                    break
                except socket.timeout:
                    if time.monotonic() >= deadline:
                        raise
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
    p.add_argument("--retry", type=float, default=1.0, help="send again after this many seconds without an answer")
    args = p.parse_args(argv)
    state, line = probe(args.host, args.port, args.send.encode(), args.timeout, args.expect.encode(), args.retry)
    print(line)
    return state


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
