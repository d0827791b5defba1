#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""A UDP service answers: send a datagram, wait for any reply (or one containing --expect).

UDP may lose a datagram; like a Kerberos client, the probe sends it again every
``--retry`` seconds (1 s) until an answer comes or the timeout is over.

OK on a reply, CRITICAL on ICMP port unreachable (refused) or no reply within the
timeout. With ``--dns NAME``, the datagram is a DNS query for NAME (``--dns-type``,
default A) and only a NOERROR answer to it is OK (a resolver). (monitoring-plugins' check_udp needs an expect string and races its own
read; a KDC, our anycast UDP service, answers any datagram it cannot parse with a
KRB-ERROR, so "any reply" is an honest liveness check.)
"""

from __future__ import annotations

import argparse
import secrets
import socket
import struct
import sys
import time

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3

# ------------------------------------------------------------------ DNS (RFC 1035)
# The one DNS message builder and reader: healthd's dns check (anycastlb.probes) uses these too.

#: DNS record types a query may ask for (the catalog's ``check.dns.type``).
DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _qname(name: str) -> bytes:
    labels = name.rstrip(".").split(".") if name.strip(".") else []
    out = b""
    for label in labels:
        raw = label.encode("ascii")
        if not 1 <= len(raw) <= 63:
            raise ValueError(f"DNS label {label!r} must have 1 to 63 characters")
        out += bytes([len(raw)]) + raw
    if len(out) + 1 > 255:
        raise ValueError(f"DNS name {name!r} is longer than 255 octets")
    return out + b"\0"


def dns_query(name: str, qtype: str, qid: int | None = None) -> tuple[int, bytes]:
    """``(id, message)``: a recursive query for ``name``/``qtype`` in class IN."""
    qid = secrets.randbelow(65536) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return qid, header + _qname(name) + struct.pack("!HH", DNS_TYPES[qtype], 1)


def dns_verdict(query: bytes, answer: bytes) -> tuple[bool, str]:
    """Whether ``answer`` is a NOERROR response to ``query``, and why (a stream's 2-byte length removed)."""
    if len(answer) < 12:
        return False, f"short DNS answer ({len(answer)} bytes)"
    qid, flags, qdcount, ancount = struct.unpack("!HHHH", answer[:8])
    if qid != struct.unpack("!H", query[:2])[0]:
        return False, "DNS answer to another query (id differs)"
    if not flags & 0x8000:
        return False, "not a DNS response (QR unset)"
    question = query[12:]
    if qdcount != 1 or answer[12:12 + len(question)].lower() != question.lower():
        return False, "DNS answer does not repeat the question"
    rcode = flags & 0x000F
    if rcode != 0:
        return False, f"DNS answer {DNS_RCODES.get(rcode, f'rcode {rcode}')}"
    return True, f"NOERROR, {ancount} answer record(s)"


def probe(host: str, port: int, payload: bytes, timeout: float, expect: bytes = b"",
          retry: float = 1.0, dns: bool = False) -> tuple[int, str]:
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
    if dns:
        ok, why = dns_verdict(payload, data)
        if not ok:
            return CRITICAL, f"CRITICAL: {host} port {port}/udp: {why} | {perf}"
        return OK, f"OK: {host} port {port}/udp: {why} in {took * 1000:.1f} ms | {perf}"
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
    p.add_argument("--dns", metavar="NAME", help="send a DNS query for NAME; OK only on a NOERROR answer")
    p.add_argument("--dns-type", default="A", choices=sorted(DNS_TYPES))
    args = p.parse_args(argv)
    payload = dns_query(args.dns, args.dns_type)[1] if args.dns else args.send.encode()
    state, line = probe(args.host, args.port, payload, args.timeout, args.expect.encode(), args.retry,
                        dns=bool(args.dns))
    print(line)
    return state


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
