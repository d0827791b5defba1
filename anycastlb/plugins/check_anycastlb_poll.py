#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""Every passive check of the fleet in one process: HAProxy frontends, announcers, route
reflectors and the network probes (http, https and certificates, tcp, udp).

One run per check interval: HAProxy's stats CSV fetched once per LB node (concurrently),
BIRD's ``show route all`` (and ``show protocols all`` when route reflectors are checked)
read once on the listener, every check evaluated by the same functions the single-check
plugins use (``check_anycastlb_haproxy``, ``check_anycastlb_bird``: same states, same
output); the network probes run concurrently in this process (asyncio, at most
``--concurrency`` in flight), deciding as the plugins they replace (``check_http``,
``check_tcp``, ``check_anycastlb_udp``) with a line like theirs. Every result is handed to
Icinga2 as a passive check result (``PROCESS_SERVICE_CHECK_RESULT`` lines written to an
external command pipe).

The checks come from a JSON spec the Icinga2 renderer writes beside the objects
(``--spec``). The poller's own state: OK when every result was handed over, CRITICAL when
the command pipe could not be written (then no service got a fresh result; this check is
what says so), UNKNOWN when the spec is unreadable.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Awaitable, Callable

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def sibling(name: str) -> ModuleType:
    """A plugin deployed beside this one (``name``, or ``name.py`` in the source tree)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, name), os.path.join(here, name + ".py")):
        if os.path.isfile(path):
            loader = importlib.machinery.SourceFileLoader(f"anycastlb_poll_{name}", path)
            spec = importlib.util.spec_from_loader(loader.name, loader)
            assert spec is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[loader.name] = mod   # dataclasses look their module up there
            loader.exec_module(mod)
            return mod
    raise ImportError(f"{name} not found beside {here}")


hap = sibling("check_anycastlb_haproxy")
bird = sibling("check_anycastlb_bird")
udp = sibling("check_anycastlb_udp")

Result = tuple[str, str, int, str]   # host, service, state, output line


def haproxy_results(sources: list[dict[str, Any]], timeout: float) -> list[Result]:
    """One stats fetch per LB node (in parallel), then each of its frontend checks."""
    def one(src: dict[str, Any]) -> list[Result]:
        try:
            st = hap.parse(hap.fetch(src["address"], src["port"], src["uri"], timeout))
        except (OSError, urllib.error.URLError, ValueError) as exc:
            line = f"CRITICAL: HAProxy stats at {src['address']}:{src['port']}{src['uri']} unreadable: {exc}"
            return [(c["host"], c["service"], CRITICAL, line) for c in src["checks"]]
        return [(c["host"], c["service"], *hap.evaluate(st, c["frontend"], c["backend"], src["node"]))
                for c in src["checks"]]
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(sources))) as pool:
        return [r for rs in pool.map(one, sources) for r in rs]


def _net(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.split("-")[0], strict=False))
    except ValueError:
        return text


def bird_results(spec: dict[str, Any], birdc: str, timeout: float) -> list[Result]:
    """``show route all`` once (and ``show protocols all`` once), then every announcer and RR check."""
    ann, rrs = spec.get("announcers", []), spec.get("rr_sessions", [])
    if not ann and not rrs:
        return []
    socket, nodes = spec["socket"], bird.node_map(spec.get("speakers", []))
    try:
        routes = bird.parse_routes(bird.birdc(birdc, socket, "show route all", timeout))
        protocols = bird.parse_protocols(bird.birdc(birdc, socket, "show protocols all", timeout)) if rrs else []
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        line = f"UNKNOWN: cannot read BIRD at {socket}: {exc}"
        return [(c["host"], c["service"], UNKNOWN, line) for c in (*ann, *rrs)]
    by_net: dict[str, list[Any]] = {}
    for r in routes:   # grouped once: each prefix then looks at its own paths only (linear, not n²)
        by_net.setdefault(_net(r.net), []).append(r)
    out: list[Result] = []
    for c in ann:
        mine = by_net.get(_net(c["prefix"]), [])
        out.append((c["host"], c["service"], *bird.evaluate_announcers(c["prefix"], mine, c["expected"], nodes)))
    for c in rrs:
        out.append((c["host"], c["service"],
                    *bird.evaluate_rr(c["rr"], protocols, routes, c["neighbors"], c["expected"], nodes)))
    return out


# ------------------------------------------------------------------ network probes
# One spec entry per probe (``probes`` in the spec; render/icinga2.py:poll_spec writes them):
# ``kind`` tcp | http | certificate | udp, ``address``, ``port``; http: ``vhost``, ``uri``,
# ``expect`` (status codes, or none), ``tls``, ``sni``; certificate: ``vhost``, ``sni``,
# ``days`` [warn, crit]; udp: ``send`` | ``dns`` + ``dns_type`` | ``krb``, ``timeout``.

#: Probes in flight at once (sockets open at the same time). A probe that times out holds its
#: place for the whole timeout: at 256, 660 dead VIP:ports (a tenth of 1,000 services) still
#: finish in about 26 s; a waiting socket costs no CPU.
CONCURRENCY = 256
#: The probes' share of a run: what is not done by then is UNKNOWN (the CheckCommand allows 50 s).
PROBE_DEADLINE = 40.0
#: The most of a page an http probe reads (it counts what it read, as check_http counts its page).
MAX_PAGE = 1 << 20


def _tls_context() -> ssl.SSLContext:
    """No verification, as check_http (``--ssl``, ``-C``): it checks what the server answers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _connect_error(p: dict[str, Any], exc: OSError) -> str:
    why = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    return f"connect to address {p['address']} and port {p['port']}: {why}"


def _perf_time(seconds: float, timeout: float) -> str:
    return f"time={seconds:.6f}s;;;0.000000;{timeout:.6f}"


async def _open(p: dict[str, Any], tls: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection (asyncio streams, with SNI when the probe sends it)."""
    sni = p.get("vhost") if p.get("sni") else None
    return await asyncio.open_connection(p["address"], p["port"], ssl=tls, server_hostname=sni or "", limit=MAX_PAGE)


async def _connect(p: dict[str, Any]) -> socket.socket:
    """A plain TCP connection as a bare non-blocking socket (the caller closes it).

    No asyncio transport, protocol or stream for a probe that sends one request or none:
    a third of the CPU of a tcp or http probe (measured: ``docs/performance.md``)."""
    family = socket.AF_INET6 if ":" in p["address"] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (p["address"], p["port"]))
    except BaseException:
        sock.close()
        raise
    return sock


async def probe_tcp(p: dict[str, Any], timeout: float) -> tuple[int, str]:
    """check_tcp: OK when the connection is accepted, CRITICAL when refused (or unreachable)."""
    t0 = time.monotonic()
    try:
        sock = await _connect(p)
    except OSError as exc:
        return CRITICAL, f"TCP CRITICAL - {_connect_error(p, exc)}"
    took = time.monotonic() - t0
    sock.close()
    return OK, (f"TCP OK - {took:.3f} second response time on {p['address']} port {p['port']}"
                f"|{_perf_time(took, timeout)}")


def _request(p: dict[str, Any]) -> bytes:
    """check_http's request: ``GET`` with ``Connection: close`` and the virtual host (with the
    port when it is not the scheme's own), HTTP/1.0 without one."""
    uri, vhost = p.get("uri") or "/", p.get("vhost")
    if any(c in f"{uri}{vhost or ''}" for c in "\r\n "):
        raise ValueError(f"uri {uri!r} or vhost {vhost!r} cannot be sent")
    lines = [f"GET {uri} HTTP/1.{1 if vhost else 0}", "User-Agent: check_anycastlb_poll", "Connection: close"]
    if vhost:
        default = 443 if p.get("tls") else 80
        lines.append(f"Host: {vhost}" if p["port"] == default else f"Host: {vhost}:{p['port']}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_verdict(status_line: str, expect: list[int] | None, port: int) -> tuple[int, str]:
    """check_http's decision on a status line: with ``expect`` OK only for one of those codes
    (else CRITICAL); without, 1xx–3xx OK, 4xx WARNING, 5xx CRITICAL. ``(state, message)``, the
    message without the size and time."""
    parts = status_line.split(" ", 2)
    code = int(parts[1]) if len(parts) > 1 and len(parts[1]) == 3 and parts[1].isdigit() else None
    if expect:
        if code not in expect:
            where = "host" if port == 80 else f"host on port {port}"
            return CRITICAL, f"HTTP CRITICAL - Invalid HTTP response received from {where}: {status_line}"
        return OK, f'HTTP OK: Status line output matched "{",".join(map(str, expect))}"'
    if not status_line.startswith("HTTP/1.") or code is None:
        return CRITICAL, f"HTTP CRITICAL: Invalid Status Line ({status_line})"
    if not 100 <= code < 600:
        return CRITICAL, f"HTTP CRITICAL: Invalid Status ({status_line})"
    state = CRITICAL if code >= 500 else WARNING if code >= 400 else OK
    return state, f"HTTP {LABELS[state]}: {status_line}"


def _peer_der(w: asyncio.StreamWriter) -> bytes | None:
    sslobj = w.get_extra_info("ssl_object")
    return sslobj.getpeercert(binary_form=True) if sslobj else None


async def _answer(send: Callable[[], Awaitable[None]], recv: Callable[[], Awaitable[bytes]]) -> bytes | None:
    """Send the request and read the answer (at most :data:`MAX_PAGE`) until the server closes; None
    when the connection broke before a byte came back (a reset, or a TLS close without close_notify,
    after the answer: the answer counts)."""
    page = b""
    try:
        await send()
        while len(page) < MAX_PAGE:
            chunk = await recv()
            if not chunk:
                break
            page += chunk
    except OSError:
        return page or None
    return page


async def _fetch(p: dict[str, Any], request: bytes) -> bytes | None:
    """:func:`_answer` on a plain connection (a bare socket). OSError: no connection."""
    sock = await _connect(p)
    loop = asyncio.get_running_loop()
    try:
        return await _answer(lambda: loop.sock_sendall(sock, request), lambda: loop.sock_recv(sock, 65536))
    finally:
        sock.close()


async def _fetch_tls(p: dict[str, Any], request: bytes, tls: ssl.SSLContext,
                     on_cert: Callable[[bytes | None], None] | None) -> bytes | None:
    """:func:`_answer` over TLS; ``on_cert`` is given the peer certificate once the handshake is done."""
    r, w = await _open(p, tls)
    if on_cert is not None:
        on_cert(_peer_der(w))

    async def send() -> None:
        w.write(request)
    try:
        return await _answer(send, lambda: r.read(65536))
    finally:
        w.transport.abort()


async def probe_http(p: dict[str, Any], timeout: float, tls: ssl.SSLContext,
                     on_cert: Callable[[bytes | None], None] | None = None) -> tuple[int, str]:
    """check_http: the request, the whole answer read, the status line decided (:func:`http_verdict`).
    ``on_cert``: given the peer certificate (DER) of its TLS handshake, for the certificate check
    of the same address, port and name (one handshake for both)."""
    t0 = time.monotonic()
    try:
        request = _request(p)
    except ValueError as exc:
        return UNKNOWN, f"HTTP UNKNOWN - {exc}"
    try:
        page = await (_fetch_tls(p, request, tls, on_cert) if p.get("tls") else _fetch(p, request))
    except ssl.SSLError as exc:
        return CRITICAL, f"HTTP CRITICAL - Cannot make SSL connection: {exc.reason or exc}"
    except OSError as exc:
        return CRITICAL, f"HTTP CRITICAL - {_connect_error(p, exc)}"
    if page is None:
        return CRITICAL, "HTTP CRITICAL - Error on receive"
    took = time.monotonic() - t0
    if not page:
        return CRITICAL, "HTTP CRITICAL - No data received from host"
    status_line = page.split(b"\n", 1)[0].strip().decode("latin-1")
    state, msg = http_verdict(status_line, p.get("expect"), p["port"])
    if msg.startswith("HTTP CRITICAL - ") or msg.startswith("HTTP CRITICAL: Invalid"):
        return state, msg
    return state, (f"{msg} - {len(page)} bytes in {took:.3f} second response time "
                   f"|{_perf_time(took, timeout)} size={len(page)}B;;;0")


# DER (X.509 as far as notAfter and the subject's CN), with the TLV reader of check_anycastlb_udp
_CN = b"\x55\x04\x03"   # 2.5.4.3


def _der_time(tag: int, body: bytes) -> float:
    text = body.decode("ascii")
    if tag == 0x17:   # UTCTime YYMMDDHHMM[SS]Z: 50–99 are 19xx (RFC 5280)
        year = int(text[:2])
        text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMM[SS]Z
        raise ValueError(f"not a time (tag 0x{tag:02x})")
    digits = text.rstrip("Z")
    secs = int(digits[12:14]) if len(digits) >= 14 else 0
    return float(calendar.timegm((int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]),
                                  int(digits[10:12]), secs, 0, 0, 0)))


def cert_expiry(der: bytes) -> tuple[float, str]:
    """``(notAfter as a Unix time, the subject's CN or "")`` of a DER certificate; ValueError when malformed."""
    _t, cert, _ = udp._read(der)
    _t, tbs, _ = udp._read(cert)
    pos, fields = 0, list[tuple[int, bytes]]()
    while pos < len(tbs) and len(fields) < 6:
        tag, body, pos = udp._read(tbs, pos)
        if tag != 0xA0:   # [0] version, when present
            fields.append((tag, body))
    if len(fields) < 5:
        raise ValueError("truncated certificate")
    _serial, _alg, _issuer, (_v, validity), (_s, subject) = fields[:5]
    _nb, _nbb, pos = udp._read(validity)
    tag, body, _ = udp._read(validity, pos)
    not_after = _der_time(tag, body)
    cn, pos = "", 0
    while pos < len(subject):
        _t, rdn, pos = udp._read(subject, pos)
        _t, atv, _ = udp._read(rdn)
        _t, oid, vpos = udp._read(atv)
        if oid == _CN:
            cn = udp._read(atv, vpos)[1].decode("utf-8", "replace")
    return not_after, cn


def cert_verdict(not_after: float, cn: str, warn: int, crit: int, now: float) -> tuple[int, str]:
    """check_http ``-C warn,crit``: whole days left (floored); WARNING at or below ``warn``,
    CRITICAL at or below ``crit``, and when less than a day is left or it has expired."""
    left = not_after - now
    days = int(left // 86400) if left > 0 else 0
    stamp = time.strftime("%a %b %e %H:%M:%S %Y +0000", time.gmtime(not_after))   # as check_http prints it
    if left < 0:
        return CRITICAL, f"CRITICAL - Certificate '{cn}' expired on {stamp}."
    if days > warn:
        return OK, f"OK - Certificate '{cn}' will expire on {stamp}."
    state = WARNING if days > crit else CRITICAL
    if days == 0:
        hours = int(left // 3600)
        span = f"{hours} hours" if hours else f"{int(left // 60)} minutes"
        return state, f"{LABELS[state]} - Certificate '{cn}' expires in {span} ({stamp})."
    return state, f"{LABELS[state]} - Certificate '{cn}' expires in {days} day(s) ({stamp})."


async def probe_certificate(p: dict[str, Any], tls: ssl.SSLContext, der: bytes | None = None) -> tuple[int, str]:
    """check_http ``--ssl -C warn,crit``: the TLS handshake (with SNI), then the peer certificate's expiry;
    ``der``: the certificate an https probe of the same address, port and name was given (no handshake)."""
    if der is None:
        try:
            _r, w = await _open(p, tls)
        except ssl.SSLError as exc:
            return CRITICAL, f"CRITICAL - Cannot make SSL connection: {exc.reason or exc}"
        except OSError as exc:
            return CRITICAL, f"CRITICAL - {_connect_error(p, exc)}"
        try:
            der = _peer_der(w)
        finally:
            w.transport.abort()
    if not der:
        return CRITICAL, "CRITICAL - Cannot retrieve server certificate."
    try:
        not_after, cn = cert_expiry(der)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        return CRITICAL, f"CRITICAL - Wrong time format in certificate ({exc})."
    warn, crit = p["days"]
    return cert_verdict(not_after, cn, warn, crit, time.time())


def probe_udp(p: dict[str, Any]) -> tuple[int, str]:
    """check_anycastlb_udp (its own functions): a datagram, a DNS query or an AS-REQ (blocking)."""
    payload = (udp.dns_query(p["dns"], p.get("dns_type") or "A")[1] if p.get("dns")
               else udp.as_req(p["krb"]) if p.get("krb") else str(p.get("send") or "").encode())
    return udp.probe(p["address"], p["port"], payload, float(p.get("timeout") or 5),
                     dns=bool(p.get("dns")), krb=p.get("krb"))


async def _within(coro: Awaitable[tuple[int, str]], timeout: float) -> tuple[int, str]:
    """``coro`` cancelled after ``timeout`` seconds (asyncio.TimeoutError); Python 3.11's ``asyncio.timeout``
    runs it in the caller's task, where ``wait_for`` starts a second task per probe."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout):
            return await coro
    return await asyncio.wait_for(coro, timeout)


def _tls_key(p: dict[str, Any]) -> tuple[Any, ...]:
    """What a TLS handshake depends on: address, port and the SNI name sent (as :func:`_open` sends it)."""
    return (p["address"], p["port"], p.get("vhost") if p.get("sni") else None)


async def _probe_all(probes: list[dict[str, Any]], timeout: float, concurrency: int, deadline: float
                     ) -> list[tuple[int, str]]:
    tls = _tls_context()
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor(max_workers=max(1, min(concurrency, 16, sum(p["kind"] == "udp" for p in probes))))

    # an https check and the certificate check of the same address, port and name share one handshake:
    # the https probe hands the peer certificate over (None when it had no handshake)
    handshakes: dict[tuple[Any, ...], asyncio.Future[bytes | None]] = {}
    for p in probes:
        if p["kind"] == "http" and p.get("tls"):
            handshakes.setdefault(_tls_key(p), loop.create_future())
    shared = {_tls_key(p) for p in probes if p["kind"] == "certificate"} & set(handshakes)
    handshakes = {k: f for k, f in handshakes.items() if k in shared}
    given: set[tuple[Any, ...]] = set()

    def hand_over(key: tuple[Any, ...], der: bytes | None) -> None:
        if not handshakes[key].done():
            handshakes[key].set_result(der)

    async def one(p: dict[str, Any]) -> tuple[int, str]:
        kind = p["kind"]
        der = None
        key = _tls_key(p) if kind in ("http", "certificate") else ()
        if kind == "certificate" and key in handshakes:   # awaited outside the gate: no slot held waiting
            der = await handshakes[key]
        hands = kind == "http" and bool(p.get("tls")) and key in handshakes and key not in given
        if hands:
            given.add(key)
        try:
            async with gate:
                if kind == "udp":
                    return await loop.run_in_executor(threads, probe_udp, p)
                coro = (probe_tcp(p, timeout) if kind == "tcp"
                        else probe_http(p, timeout, tls, (lambda d: hand_over(key, d)) if hands else None)
                        if kind == "http" else probe_certificate(p, tls, der) if kind == "certificate" else None)
                if coro is None:
                    return UNKNOWN, f"UNKNOWN - unknown probe kind {kind!r}"
                try:
                    return await _within(coro, timeout)
                except asyncio.TimeoutError:
                    return CRITICAL, f"CRITICAL - Socket timeout after {timeout:g} seconds"
        finally:
            if hands:   # no handshake (refused, timed out): the certificate check makes its own
                hand_over(key, None)

    tasks = [asyncio.ensure_future(one(p)) for p in probes]
    try:
        if tasks:
            await asyncio.wait(tasks, timeout=deadline)
    finally:
        threads.shutdown(wait=False, cancel_futures=True)
    out = []
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is None:
            out.append(t.result())
        elif t.done() and not t.cancelled():
            exc = t.exception()
            out.append((UNKNOWN, f"UNKNOWN - probe failed: {type(exc).__name__}: {exc}"))
        else:
            t.cancel()
            out.append((UNKNOWN, f"UNKNOWN - not probed within the poller's {deadline:g} s "
                                 f"({len(probes)} probes, at most {concurrency} at a time)"))
    return out


#: What names a check rather than what its probe does.
OWN_KEYS = frozenset({"host", "service"})


def probe_results(probes: list[dict[str, Any]], timeout: float = 10.0, concurrency: int = CONCURRENCY,
                  deadline: float = PROBE_DEADLINE) -> list[Result]:
    """Every probe of the spec, concurrently (at most ``concurrency`` in flight, ``timeout`` each,
    ``deadline`` for all): one result per probe, in the spec's order."""
    if not probes:
        return []
    # checks that probe the same thing the same way (the tcp checks of one mail backend's port, for
    # each service in front of it) share one probe: what it answers is every such check's result
    unique: dict[str, int] = {}
    index = [unique.setdefault(json.dumps({k: v for k, v in p.items() if k not in OWN_KEYS}, sort_keys=True),
                               len(unique)) for p in probes]
    firsts: dict[int, dict[str, Any]] = {}
    for i, p in zip(index, probes):
        firsts.setdefault(i, p)
    verdicts = asyncio.run(_probe_all(list(firsts.values()), timeout, concurrency, deadline))
    return [(p["host"], p["service"], *verdicts[i]) for p, i in zip(probes, index)]


def command_lines(results: list[Result], now: int) -> str:
    """``PROCESS_SERVICE_CHECK_RESULT`` lines (Icinga2's external command syntax), one per
    result, stamped ``now`` (Icinga2 takes it as the check's time)."""
    lines = []
    for host, service, state, output in results:
        if any(c in f"{host}{service}" for c in ";\n\r"):
            raise ValueError(f"a host or service name cannot be passed on: {host!r} {service!r}")
        text = " ".join(output.splitlines())
        lines.append(f"[{now}] PROCESS_SERVICE_CHECK_RESULT;{host};{service};{state};{text}\n")
    return "".join(lines)


def submit(path: str, text: str) -> None:
    """Write the commands to Icinga2's pipe (refused at once when no Icinga2 reads it)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND)
    try:
        os.set_blocking(fd, True)
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def run(spec: dict[str, Any], command_file: str, birdc: str = "birdc", timeout: float = 10.0,
        concurrency: int = CONCURRENCY) -> tuple[int, str]:
    """Evaluate every check of ``spec``, hand the results over; the poller's own state and line."""
    t0 = time.monotonic()
    # Results carry the time their sources were read, not the time they were handed in: at
    # 1,000 services a run takes about 10 s, and a result stamped at its end looked newer
    # than what it had read (a round forced meanwhile took a run's stale announcers for its own).
    read_at = int(time.time())
    probes = spec.get("probes", [])
    with ThreadPoolExecutor(max_workers=3) as pool:
        fut_h = pool.submit(haproxy_results, spec.get("haproxy", []), timeout)
        fut_b = pool.submit(bird_results, spec.get("bird") or {}, birdc, timeout)
        fut_p = pool.submit(probe_results, probes, timeout, concurrency)
        results = fut_h.result() + fut_b.result() + fut_p.result()
    counts = {label: 0 for label in LABELS.values()}
    for r in results:
        counts[LABELS.get(r[2], "UNKNOWN")] += 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no checks"
    perf = " ".join(f"{k.lower()}={v};;;0" for k, v in counts.items()) + f" seconds={time.monotonic() - t0:.3f}s"
    try:
        submit(command_file, command_lines(results, read_at))
    except (OSError, ValueError) as exc:
        return CRITICAL, f"CRITICAL: {len(results)} results not handed to Icinga2 ({command_file}: {exc}) | {perf}"
    return OK, (f"OK: {len(results)} results handed to Icinga2 ({summary}); HAProxy stats of "
                f"{len(spec.get('haproxy', []))} node(s) and BIRD read once each, {len(probes)} network "
                f"probes | {perf}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="check_anycastlb_poll", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="the JSON spec the Icinga2 renderer writes")
    p.add_argument("--command-file", required=True, help="Icinga2's external command pipe")
    p.add_argument("--birdc", default="birdc")
    p.add_argument("-t", "--timeout", type=float, default=10.0,
                   help="per HAProxy fetch, birdc call and network probe (udp probes: their own, from the spec)")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY, help="network probes in flight at once")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the poller; print one plugin line; return the plugin exit code."""
    args = build_parser().parse_args(argv)
    try:
        with open(args.spec, encoding="utf-8") as fh:
            spec = json.load(fh)
    except (OSError, ValueError) as exc:
        print(f"UNKNOWN: cannot read the poll spec {args.spec}: {exc}")
        return UNKNOWN
    state, line = run(spec, args.command_file, args.birdc, args.timeout, max(1, args.concurrency))
    print(line)
    return state


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
