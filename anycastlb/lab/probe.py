"""Bounded client probes run inside a lab namespace: ``python -m anycastlb.lab.probe SPEC.json``.

Each probe makes at most one connection (or one datagram) with a short timeout and
stops by itself; at most :data:`PARALLEL` run at once (3,200 probes one after another
took 45 s at 1,000 services); results are printed as JSON, in the order given. A probe
succeeds only on an answer: an HTTP status, a datagram, or for tcp the server's first
line (a bare connect is not enough: HAProxy accepts on a tcp frontend whose backends
are all down). Used by ``lab status`` (from the client and from a campus host) and by
the integration tests.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Probes in flight at once (each one connection or datagram with its own timeout).
PARALLEL = 16


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one probe; never raises, always returns ``{"ok", "detail", "ms"}``."""
    kind, addr, port = spec["kind"], spec["address"], int(spec["port"])
    timeout = float(spec.get("timeout", 2.0))
    t0 = time.monotonic()
    try:
        if kind in ("http", "https"):
            ok, detail = _http(spec, kind, addr, port, timeout)
        elif kind == "tcp":
            ok, detail = _tcp(spec, addr, port, timeout)
        elif kind == "dns":
            ok, detail = _dns(spec, addr, port, timeout)
        elif kind == "ldap":
            ok, detail = _ldap(addr, port, timeout)
        elif kind == "kerberos":
            ok, detail = _kerberos(spec, addr, port, timeout)
        elif kind == "udp":
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                # Connected, as real clients are: an answer from another address than the VIP is dropped.
                s.connect((addr, port))
                s.send(b"probe\n")
                data = s.recv(512)
            ok, detail = True, f"answered: {data.decode(errors='replace').strip()}"
        else:
            ok, detail = False, f"unknown probe kind {kind!r}"
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return {"ok": ok, "detail": detail, "ms": round((time.monotonic() - t0) * 1000, 1)}


def _tcp(spec: dict[str, Any], addr: str, port: int, timeout: float) -> tuple[bool, str]:
    """Connect and require the server's first line (a banner, as IMAP and the lab's responders
    send): HAProxy accepts on a tcp frontend even when no backend is up, so a bare connect,
    a close without a word or a receive timeout is a failure. ``expect``: a text the line
    must contain."""
    with socket.create_connection((addr, port), timeout=timeout) as s:
        data = b""
        try:
            while b"\n" not in data and len(data) < 512:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            return False, f"connected, but no answer within {timeout:g} s" + (
                f" (got {data[:80].decode(errors='replace')!r})" if data else "")
    banner = data.decode(errors="replace").strip().splitlines()[0] if data.strip() else ""
    if not banner:
        return False, "connected, but closed without an answer"
    expect = str(spec.get("expect") or "")
    if expect and expect not in banner:
        return False, f"answered {banner[:80]!r}, expected {expect!r}"
    return True, f"connected: {banner}"


def _exchange(addr: str, port: int, transport: str, message: bytes, prefix: int, timeout: float) -> bytes:
    """One message, one answer: a datagram, or over tcp with a ``prefix``-byte length in front of each."""
    if transport == "udp":
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((addr, port))
            s.send(message)
            return s.recv(65535)
    with socket.create_connection((addr, port), timeout=timeout) as s:
        s.sendall(len(message).to_bytes(prefix, "big") + message)
        data = b""
        while len(data) < prefix or len(data) < prefix + int.from_bytes(data[:prefix], "big"):
            chunk = s.recv(65535)
            if not chunk:
                break
            data += chunk
        return data[prefix:]


def _dns(spec: dict[str, Any], addr: str, port: int, timeout: float) -> tuple[bool, str]:
    """One DNS query for ``name``/``qtype`` over ``transport`` (udp, or tcp with its length prefix);
    ok on a NOERROR answer to it."""
    from anycastlb.probes import dns_query, dns_verdict
    _qid, query = dns_query(spec["name"], spec.get("qtype", "A"))
    return dns_verdict(query, _exchange(addr, port, spec.get("transport", "udp"), query, 2, timeout))


def _kerberos(spec: dict[str, Any], addr: str, port: int, timeout: float) -> tuple[bool, str]:
    """One AS-REQ for ``krbtgt/REALM`` over ``transport`` (udp, or tcp with its 4-byte length);
    ok when a KDC of the realm answers it (healthd's own verdict)."""
    from anycastlb.probes import as_req, krb_verdict
    request = as_req(spec["realm"])
    return krb_verdict(spec["realm"], _exchange(addr, port, spec.get("transport", "udp"), request, 4, timeout))


#: An anonymous LDAPv3 simple bind (message id 1), as HAProxy's ldap-check sends it.
LDAP_BIND = bytes.fromhex("300c020101600702010304008000")


def _ldap(addr: str, port: int, timeout: float) -> tuple[bool, str]:
    """An anonymous bind; ok on a BindResponse with resultCode success."""
    with socket.create_connection((addr, port), timeout=timeout) as s:
        s.sendall(LDAP_BIND)
        data = s.recv(512)
    i = data.find(b"\x61")
    if not data.startswith(b"\x30") or i < 0 or data[i + 2:i + 5] != b"\x0a\x01\x00":
        return False, f"no successful BindResponse ({data[:16].hex() or 'closed'})"
    return True, "bind: success"


def _http(spec: dict[str, Any], kind: str, addr: str, port: int, timeout: float) -> tuple[bool, str]:
    host = spec.get("host") or addr
    if kind == "https":
        ctx = ssl.create_default_context(cafile=spec.get("cafile"))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(addr, port, timeout=timeout, context=ctx)
        # SNI and certificate name check against the virtual host, not the VIP.
        conn._tunnel_host = None  # type: ignore[attr-defined]
        sock = socket.create_connection((addr, port), timeout=timeout)
        conn.sock = ctx.wrap_socket(sock, server_hostname=host)
    else:
        conn = http.client.HTTPConnection(addr, port, timeout=timeout)
    try:
        conn.request("GET", spec.get("path", "/"), headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read(4096).decode(errors="replace")
    finally:
        conn.close()
    expect = str(spec.get("expect") or "200")
    ok = str(resp.status) == expect
    detail = f"{resp.status}"
    if resp.status in (301, 302, 307, 308):
        detail += f" -> {resp.getheader('Location')}"
    else:
        first = body.strip().splitlines()[0][:80] if body.strip() else ""
        detail += f" {first}"
    return ok, detail


def scan(address: str, ports: list[int], timeout: float = 1.5, batch: int = 200) -> list[int]:
    """TCP ports of ``address`` that accept a connection (non-blocking connects, ``batch`` at a time)."""
    import selectors
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    open_ports: list[int] = []
    for i in range(0, len(ports), batch):
        sel = selectors.DefaultSelector()
        socks = {}
        for port in ports[i:i + batch]:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((address, port))
            sel.register(s, selectors.EVENT_WRITE, port)
            socks[port] = s
        deadline = time.monotonic() + timeout
        pending = set(socks)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                port = key.data
                if port in pending:
                    pending.discard(port)
                    sel.unregister(key.fileobj)
                    if socks[port].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        open_ports.append(port)
        for s in socks.values():
            s.close()
        sel.close()
    return sorted(open_ports)


def load(spec: dict[str, Any]) -> dict[str, Any]:
    """A bounded load: cycle through ``targets`` every ``interval`` s until ``max_requests``, ``duration``
    or the ``stop_file`` appears; count the failures (each a new connection, short timeout).

    ``marks``: files the caller creates, in order, at the instants that delimit what it
    measures (e.g. a deploy's start and end); ``at_marks`` then holds, per mark seen, the
    requests and failures counted before it appeared, so the caller can count a window.
    """
    import os
    targets = spec["targets"]
    interval = float(spec.get("interval", 0.01))
    end = time.monotonic() + float(spec.get("duration", 60))
    limit = int(spec.get("max_requests", 20000))
    stop = spec.get("stop_file")
    marks = list(spec.get("marks") or [])
    at_marks: list[dict[str, Any]] = []
    done = failed = 0
    failures: list[dict[str, Any]] = []
    per_target: dict[str, int] = {}
    t0 = time.monotonic()
    while done < limit and time.monotonic() < end and not (stop and os.path.exists(stop)):
        while len(at_marks) < len(marks) and os.path.exists(marks[len(at_marks)]):
            at_marks.append({"requests": done, "failed": failed, "at_s": round(time.monotonic() - t0, 3)})
        t = targets[done % len(targets)]
        r = probe(t)
        done += 1
        key = f"{t['kind']} {t['address']}:{t['port']}"
        per_target[key] = per_target.get(key, 0) + 1
        if not r["ok"]:
            failed += 1
            failures.append({"at_s": round(time.monotonic() - t0, 3), "target": key, "detail": r["detail"]})
        time.sleep(interval)
    return {"requests": done, "failed": failed, "failures": failures[:50], "per_target": per_target,
            "at_marks": at_marks, "seconds": round(time.monotonic() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mode = "probe"
    if argv and argv[0] in ("--scan", "--load"):
        mode, argv = argv[0][2:], argv[1:]
    spec = json.loads(open(argv[0]).read() if argv and argv[0] != "-" else sys.stdin.read())
    if mode == "scan":
        print(json.dumps({a: scan(a, spec["ports"], float(spec.get("timeout", 1.5))) for a in spec["addresses"]}))
    elif mode == "load":
        print(json.dumps(load(spec)))
    else:
        with ThreadPoolExecutor(PARALLEL) as pool:
            print(json.dumps([{**s, **r} for s, r in zip(spec, pool.map(probe, spec))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
