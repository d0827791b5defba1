#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""A UDP service answers: send a datagram, wait for any reply (or one containing --expect).

UDP may lose a datagram; like a Kerberos client, the probe sends it again every
``--retry`` seconds (1 s) until an answer comes or the timeout is over.

OK on a reply, CRITICAL on ICMP port unreachable (refused) or no reply within the
timeout. With ``--dns NAME``, the datagram is a DNS query for NAME (``--dns-type``,
default A) and only a NOERROR answer to it is OK (a resolver). With ``--krb REALM``, it
is a Kerberos AS-REQ for ``krbtgt/REALM`` and only an answer of a KDC serving REALM is OK
(MIT krb5kdc answers no datagram it cannot parse, so "any reply" cannot check a KDC).
(monitoring-plugins' check_udp needs an expect string and races its own read.)
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


# ------------------------------------------------------------------ Kerberos (RFC 4120): DER, the subset an AS-REQ needs
# The one AS-REQ builder and reader: healthd's kerberos check (anycastlb.probes) uses these too.


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _int(n: int) -> bytes:
    body = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return _tlv(0x02, body)


def _ctx(n: int, body: bytes) -> bytes:
    """An explicit context tag ``[n]``."""
    return _tlv(0xA0 | n, body)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _gstr(text: str) -> bytes:
    return _tlv(0x1B, text.encode("ascii"))  # GeneralString (KerberosString, Realm)


def _principal(name_type: int, *parts: str) -> bytes:
    return _seq(_ctx(0, _int(name_type)), _ctx(1, _seq(*(_gstr(p) for p in parts))))


def _read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """One TLV at ``pos``: ``(tag, body, next position)``; ValueError when truncated."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos:pos + length], pos + length


def _fields(body: bytes) -> dict[int, bytes]:
    """The explicitly tagged fields of a SEQUENCE body: ``{n: inner TLV body}``."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(body):
        tag, inner, pos = _read(body, pos)
        if tag & 0xE0 == 0xA0:
            _t, value, _ = _read(inner)
            out[tag & 0x1F] = value
    return out


#: Errors that say the KDC does not serve the realm (or cannot serve at all). The client of the
#: AS-REQ is ``krbtgt/REALM`` itself, which every KDC of the realm knows: "client unknown" means
#: the realm is not this KDC's (MIT krb5kdc answers a made-up client of any realm with it).
KRB_BAD_ERRORS = {6: "KDC_ERR_C_PRINCIPAL_UNKNOWN", 7: "KDC_ERR_S_PRINCIPAL_UNKNOWN", 29: "KDC_ERR_SVC_UNAVAILABLE",
                  68: "KDC_ERR_WRONG_REALM"}
KRB_ERRORS = {12: "KDC_ERR_POLICY", 24: "KDC_ERR_PREAUTH_FAILED", 25: "KDC_ERR_PREAUTH_REQUIRED",
              14: "KDC_ERR_ETYPE_NOSUPP", 18: "KDC_ERR_CLIENT_REVOKED", **KRB_BAD_ERRORS}


def as_req(realm: str, nonce: int | None = None, now: float | None = None) -> bytes:
    """A DER AS-REQ for ``krbtgt/REALM@REALM`` from ``krbtgt/REALM@REALM``: only the realm's KDC knows
    that client. It answers with an AS-REP (a ticket sealed with the krbtgt key, of no use to anyone
    else: MIT) or refuses the client (policy, revoked, pre-authentication: Heimdal, AD)."""
    nonce = secrets.randbelow(2**31) if nonce is None else nonce
    till = time.strftime("%Y%m%d%H%M%SZ", time.gmtime((time.time() if now is None else now) + 3600))
    body = _seq(
        _ctx(0, _tlv(0x03, b"\x00" + bytes([0x40, 0x81, 0x00, 0x10]))),  # forwardable, renewable, canonicalize...
        _ctx(1, _principal(2, "krbtgt", realm)),                         # NT-SRV-INST
        _ctx(2, _gstr(realm)),
        _ctx(3, _principal(2, "krbtgt", realm)),                         # NT-SRV-INST
        _ctx(5, _tlv(0x18, till.encode("ascii"))),                       # GeneralizedTime
        _ctx(7, _int(nonce)),
        _ctx(8, _seq(_int(18), _int(17), _int(23))),                     # aes256, aes128, rc4
    )
    req = _seq(_ctx(1, _int(5)), _ctx(2, _int(10)), _ctx(4, body))
    return _tlv(0x6A, req)  # [APPLICATION 10]


def krb_verdict(realm: str, answer: bytes) -> tuple[bool, str]:
    """Whether ``answer`` (without a stream's 4-byte length) shows a KDC serving ``realm``, and why."""
    if not answer or answer[0] not in (0x6B, 0x7E):  # [APPLICATION 11] AS-REP, [APPLICATION 30] KRB-ERROR
        return False, f"not a Kerberos answer (tag 0x{answer[0]:02x})" if answer else "empty Kerberos answer"
    try:
        tag, body, _ = _read(answer)
        stag, seq, _ = _read(body)
        if stag != 0x30:
            raise ValueError("not a SEQUENCE")
        f = _fields(seq)
        if tag == 0x6B:  # KDC-REP: pvno [0] 5, msg-type [1] 11
            if f.get(0) != b"\x05" or f.get(1) != b"\x0b":
                raise ValueError("AS-REP without pvno 5 and msg-type 11")
            return True, f"KDC of {realm} answers (AS-REP)"
        code = int.from_bytes(f[6], "big", signed=True) if 6 in f else None
        their_realm = f[9].decode("ascii", "replace") if 9 in f else ""
    except (ValueError, IndexError) as exc:
        return False, f"malformed Kerberos answer: {exc}"
    if code is None:
        return False, "KRB-ERROR without an error code"
    name = KRB_ERRORS.get(code, f"error {code}")
    if code in KRB_BAD_ERRORS:
        return False, f"KDC answers {name}" + (f" (krbtgt/{realm} unknown: not a KDC of {realm})" if code == 6 else "")
    if their_realm != realm:
        return False, f"KDC answers for realm {their_realm!r}, not {realm!r} ({name})"
    return True, f"KDC of {realm} answers ({name})"


def probe(host: str, port: int, payload: bytes, timeout: float, expect: bytes = b"",
          retry: float = 1.0, dns: bool = False, krb: str | None = None) -> tuple[int, str]:
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
    if dns or krb:
        ok, why = krb_verdict(krb, data) if krb else dns_verdict(payload, data)
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
    p.add_argument("--krb", metavar="REALM", help="send a Kerberos AS-REQ for krbtgt/REALM; OK only when a KDC "
                                                  "of REALM answers it")
    args = p.parse_args(argv)
    if args.dns and args.krb:
        p.error("--dns and --krb exclude each other")
    payload = (dns_query(args.dns, args.dns_type)[1] if args.dns else as_req(args.krb) if args.krb
               else args.send.encode())
    state, line = probe(args.host, args.port, payload, args.timeout, args.expect.encode(), args.retry,
                        dns=bool(args.dns), krb=args.krb)
    print(line)
    return state


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
