"""A tiny, bounded TCP/UDP responder standing in for software the catalog does not manage.

TCP: accept, send ``<name> <port>\\n``, then echo what the client sends until it closes
(or stays idle for ``--idle`` seconds). UDP: answer every datagram with the same banner.
``--ldap`` ports send no banner and answer every LDAP message with a successful
BindResponse of the same message id: enough for HAProxy's ``option ldap-check`` (an
anonymous bind); there is no directory behind it.
It listens on ``0.0.0.0`` and ``::`` (so VIPs on ``lo`` answer too), is single-threaded
(one ``selectors`` loop, at most ``--max-conns`` open connections) and exits when the
``--watch`` path disappears (the lab's state dir) besides being killed by PID at teardown.

Run as a script: ``python responder.py --name kdc1 --tcp 88 464 --udp 88 464 --watch DIR``.
"""
from __future__ import annotations

import argparse
import os
import selectors
import socket
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Lab


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 does not export it


def _reply_udp(sock: socket.socket, banner: bytes) -> None:
    """Answer one datagram with ``banner``, from the destination address it was sent to."""
    _data, ancdata, _flags, peer = sock.recvmsg(2048, socket.CMSG_SPACE(64))
    for level, ctype, cdata in ancdata:
        if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
            dst = cdata[8:12]
            sock.sendmsg([banner], [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, dst, dst))], 0, peer)
            return
        if level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO and len(cdata) >= 20:
            sock.sendmsg([banner], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                                     struct.pack("=16si", cdata[:16], 0))], 0, peer)
            return
    sock.sendto(banner, peer)


def ldap_bind_response(request: bytes) -> bytes:
    """A BindResponse (resultCode success) to the LDAP message ``request``, or b"" if it is none."""
    # LDAPMessage ::= SEQUENCE { messageID INTEGER, protocolOp ... }: 30 LEN 02 N ID...
    if len(request) < 5 or request[0] != 0x30:
        return b""
    at = 2 + (request[1] & 0x7F if request[1] & 0x80 else 0)
    if at + 2 > len(request) or request[at] != 0x02:
        return b""
    n = request[at + 1]
    msgid = request[at:at + 2 + n]
    op = b"\x61\x07\x0a\x01\x00\x04\x00\x04\x00"   # [APPLICATION 1] resultCode 0, matchedDN "", message ""
    return bytes([0x30, len(msgid) + len(op)]) + msgid + op


def _listeners(tcp: list[int], udp: list[int]) -> list[tuple[socket.socket, str, int]]:
    out = []
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for kind, ports in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
            for port in ports:
                s = socket.socket(fam, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if kind == socket.SOCK_DGRAM:
                    # Answer from the address the datagram was sent to (a VIP on lo), as a real
                    # anycast daemon must: a reply from the interface address is dropped by clients.
                    if fam == socket.AF_INET:
                        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                    else:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                s.bind((addr, port))
                if kind == socket.SOCK_STREAM:
                    s.listen(64)
                s.setblocking(False)
                out.append((s, "tcp" if kind == socket.SOCK_STREAM else "udp", port))
    return out


def serve(name: str, tcp: list[int], udp: list[int], watch: Path | None = None,
          max_conns: int = 256, idle: float = 10.0, ldap: list[int] | None = None) -> None:
    """Answer on the given ports until ``watch`` disappears (or forever if None)."""
    sel = selectors.DefaultSelector()
    ldap_ports = set(ldap or [])
    for s, kind, port in _listeners(sorted(set(tcp) | ldap_ports), udp):
        sel.register(s, selectors.EVENT_READ, (kind, port, None))
    conns: dict[socket.socket, float] = {}
    print(f"responder {name}: tcp {tcp} udp {udp}", flush=True)
    next_watch = 0.0
    while True:
        now = time.monotonic()
        if watch is not None and now >= next_watch:
            if not watch.exists():
                return
            next_watch = now + 1.0
        for key, _ in sel.select(timeout=1.0):
            kind, port, _ = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            banner = f"{name} {port}\n".encode()
            try:
                if kind == "udp":
                    _reply_udp(sock, banner)
                elif kind == "tcp":
                    c, _ = sock.accept()
                    if len(conns) >= max_conns:
                        c.close()
                        continue
                    c.setblocking(False)
                    if port not in ldap_ports:
                        c.send(banner)
                    conns[c] = time.monotonic()
                    sel.register(c, selectors.EVENT_READ, ("conn", port, None))
                else:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionResetError
                    sock.send(ldap_bind_response(data) if port in ldap_ports else data)
                    conns[sock] = time.monotonic()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if kind == "conn":
                    sel.unregister(sock)
                    conns.pop(sock, None)
                    sock.close()
        cutoff = time.monotonic() - idle
        # A directory keeps idle binds open: LDAP connections are not cut for idling.
        for c in [c for c, t in conns.items() if t < cutoff and sel.get_key(c).data[1] not in ldap_ports]:
            sel.unregister(c)
            del conns[c]
            c.close()


def start_responder(lab: "Lab", host: str, tcp: list[int], udp: list[int], name: str | None = None,
                    ldap: list[int] | None = None) -> int:
    """Run a responder in lab host ``host`` (banner name defaults to the host); return its PID."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--name", name or host,
            "--watch", str(lab.statedir)]
    if tcp:
        argv += ["--tcp", *map(str, tcp)]
    if udp:
        argv += ["--udp", *map(str, udp)]
    if ldap:
        argv += ["--ldap", *map(str, ldap)]
    return lab.spawn(host, argv, "responder")


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--tcp", type=int, nargs="*", default=[])
    ap.add_argument("--udp", type=int, nargs="*", default=[])
    ap.add_argument("--ldap", type=int, nargs="*", default=[], help="tcp ports answering LDAP binds")
    ap.add_argument("--watch", type=Path)
    ap.add_argument("--max-conns", type=int, default=256)
    ap.add_argument("--idle", type=float, default=10.0)
    a = ap.parse_args(argv)
    os.nice(5)
    serve(a.name, a.tcp, a.udp, a.watch, a.max_conns, a.idle, a.ldap)


if __name__ == "__main__":
    main()
