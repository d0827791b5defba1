"""The poller's network probes against real servers on 127.0.0.1: the states and lines a user
sees for the http, https, certificate, tcp and udp checks (what check_http, check_tcp and
check_anycastlb_udp decided when each was a process of its own)."""
from __future__ import annotations

import http.server
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from anycastlb.compiler import compile_catalog
from anycastlb.plugins import check_anycastlb_poll as poll
from anycastlb.plugins import check_anycastlb_udp as udp
from anycastlb.render import icinga2

LINE = re.compile(r"^\[(\d+)\] PROCESS_SERVICE_CHECK_RESULT;([^;]+);([^;]+);(\d);(.*)$")


class Handler(http.server.BaseHTTPRequestHandler):
    """``/status/NNN`` answers NNN; every request's Host header is recorded on the server."""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.hosts.append(self.headers.get("Host"))  # type: ignore[attr-defined]
        code = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        body = f"status {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def certificate(tmp: Path, days: int) -> tuple[Path, Path]:
    key, crt = tmp / f"{days}.key", tmp / f"{days}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", str(days), "-subj", f"/O=anycastlb test/CN=days{days}.example.org",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return key, crt


@pytest.fixture
def servers(tmp_path: Path) -> Iterator:
    """``serve(days=None) -> (port, server)``: an HTTP server, with ``days`` an HTTPS one whose
    throwaway certificate is valid that many days (SNI names recorded in ``server.sni``)."""
    started: list[http.server.ThreadingHTTPServer] = []

    def serve(days: int | None = None) -> tuple[int, http.server.ThreadingHTTPServer]:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.hosts, srv.sni = [], []  # type: ignore[attr-defined]
        if days is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            key, crt = certificate(tmp_path, days)
            ctx.load_cert_chain(crt, key)
            ctx.sni_callback = lambda sock, name, _ctx: srv.sni.append(name)  # type: ignore[attr-defined]
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return srv.server_port, srv
    yield serve
    for srv in started:
        srv.shutdown()
        srv.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_probe(port: int, uri: str = "/", expect: list[int] | None = None, tls: bool = False, **kw) -> dict:
    return {"host": "vip-www", "service": f"probe {uri}", "kind": "http", "address": "127.0.0.1", "port": port,
            "vhost": "www.example.org", "uri": uri, "tls": tls, "sni": tls, "expect": expect, **kw}


def one(p: dict, **kw) -> tuple[int, str]:
    [(_h, _s, state, line)] = poll.probe_results([p], **kw)
    return state, line


def test_http_states_follow_check_http(servers):
    port, srv = servers()
    state, line = one(http_probe(port, "/status/200"))
    assert state == poll.OK and line.startswith("HTTP OK: HTTP/1.1 200 OK - ") and "second response time" in line
    assert re.search(r"\|time=[\d.]+s;;;0\.000000;10\.000000 size=\d+B;;;0$", line), line
    assert one(http_probe(port, "/status/301"))[0] == poll.OK, "3xx is OK (check_http does not follow)"
    state, line = one(http_probe(port, "/status/404"))
    assert (state, line.split(" - ")[0]) == (poll.WARNING, "HTTP WARNING: HTTP/1.1 404 Not Found")
    state, line = one(http_probe(port, "/status/503"))
    assert (state, line.split(" - ")[0]) == (poll.CRITICAL, "HTTP CRITICAL: HTTP/1.1 503 Service Unavailable")
    assert srv.hosts[0] == f"www.example.org:{port}", "the vhost, with the port that is not 80"


def test_expected_status_codes(servers):
    port, _srv = servers()
    state, line = one(http_probe(port, "/status/301", expect=[301, 302]))
    assert state == poll.OK and line.startswith('HTTP OK: Status line output matched "301,302" - ')
    state, line = one(http_probe(port, "/status/200", expect=[301]))
    assert (state, line) == (poll.CRITICAL, f"HTTP CRITICAL - Invalid HTTP response received from host on port "
                                            f"{port}: HTTP/1.1 200 OK")
    assert one(http_probe(port, "/status/404", expect=[404]))[0] == poll.OK, "an expected 404 is OK"


def test_https_sends_sni_and_checks_no_certificate(servers):
    port, srv = servers(days=2)   # self-signed and about to expire: the request check does not mind
    state, line = one(http_probe(port, "/status/200", tls=True))
    assert state == poll.OK and line.startswith("HTTP OK: HTTP/1.1 200 OK"), line
    assert srv.sni == ["www.example.org"] and srv.hosts == [f"www.example.org:{port}"]


def test_refused_and_timeout_are_critical():
    port = closed_port()
    assert one(http_probe(port)) == (
        poll.CRITICAL, f"HTTP CRITICAL - connect to address 127.0.0.1 and port {port}: Connection refused")
    tcp = {"host": "mail1", "service": "backend imap mail1:143", "kind": "tcp", "address": "127.0.0.1", "port": port}
    assert one(tcp) == (poll.CRITICAL, f"TCP CRITICAL - connect to address 127.0.0.1 and port {port}: "
                                       "Connection refused")
    with socket.socket() as silent:   # accepts (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        p = http_probe(silent.getsockname()[1])
        assert one(p, timeout=0.5) == (poll.CRITICAL, "CRITICAL - Socket timeout after 0.5 seconds")


def test_tcp_connect_is_ok(servers):
    port, _srv = servers()
    state, line = one({"host": "mail1", "service": "t", "kind": "tcp", "address": "127.0.0.1", "port": port})
    assert state == poll.OK and re.fullmatch(
        rf"TCP OK - [\d.]+ second response time on 127\.0\.0\.1 port {port}\|time=[\d.]+s;;;0\.000000;10\.000000",
        line), line



def test_ipv6_tcp_and_a_long_http_answer_on_bare_sockets():
    """tcp and plain http probes use bare sockets (no asyncio stream): an IPv6 address picks the
    family, and an answer longer than one read (and than the reader's buffer) is read whole."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    body = b"x" * 300_000
    with socket.socket(socket.AF_INET6) as srv:
        try:
            srv.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1 here")
        srv.listen(8)
        port = srv.getsockname()[1]

        def answer() -> None:
            for _ in range(2):
                conn, _addr = srv.accept()
                with conn:
                    conn.settimeout(5)
                    request = conn.recv(4096)
                    if request.startswith(b"GET "):
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        t = threading.Thread(target=answer, daemon=True)
        t.start()
        tcp = {"host": "h", "service": "t", "kind": "tcp", "address": "::1", "port": port}
        state, line = one(tcp)
        assert state == poll.OK and f"on ::1 port {port}|" in line, line
        state, line = one(http_probe(port, address="::1"))
        t.join(5)
    assert state == poll.OK and line.startswith("HTTP OK: HTTP/1.1 200 OK - "), line
    size = int(re.search(r" - (\d+) bytes in ", line).group(1))
    assert size == len(body) + len(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n")

def cert_probe(port: int, days: tuple[int, int] = (30, 14)) -> dict:
    return {"host": "vip-www", "service": "vip www certificate", "kind": "certificate", "address": "127.0.0.1",
            "port": port, "vhost": "www.example.org", "uri": "/", "tls": True, "sni": True, "days": list(days),
            "expect": None}


@pytest.mark.parametrize("valid_days, state, words", [
    (60, poll.OK, "will expire on"),
    (20, poll.WARNING, "expires in 19 day(s)"),     # 19.99… days left: floored, as check_http does
    (10, poll.CRITICAL, "expires in 9 day(s)"),
])
def test_certificate_days_left(servers, valid_days, state, words):
    port, srv = servers(days=valid_days)
    got, line = one(cert_probe(port))
    assert got == state, line
    assert line.startswith(f"{poll.LABELS[state]} - Certificate 'days{valid_days}.example.org' ") and words in line
    assert srv.sni == ["www.example.org"] and srv.hosts == [], "a certificate check sends no request"


def test_an_https_check_and_its_certificate_check_share_one_handshake(servers):
    port, srv = servers(days=20)
    https = http_probe(port, "/status/200", tls=True)
    results = poll.probe_results([cert_probe(port), https, cert_probe(port)])
    assert [r[2] for r in results] == [poll.WARNING, poll.OK, poll.WARNING], results
    assert "expires in 19 day(s)" in results[0][3] and results[0][3] == results[2][3]
    assert srv.sni == ["www.example.org"], "one TLS handshake for the three checks"
    # another name is another handshake; so is a certificate check with no https check beside it
    other = {**cert_probe(port), "vhost": "intranet.example.org"}
    assert [r[2] for r in poll.probe_results([https, other])] == [poll.OK, poll.WARNING]
    assert srv.sni[1:] == ["www.example.org", "intranet.example.org"]


def test_a_certificate_check_makes_its_own_handshake_when_the_https_one_had_none(servers):
    port = closed_port()
    results = poll.probe_results([http_probe(port, tls=True), cert_probe(port)])
    assert results[0][2] == results[1][2] == poll.CRITICAL
    assert results[1][3] == f"CRITICAL - connect to address 127.0.0.1 and port {port}: Connection refused"


def test_checks_that_probe_the_same_way_share_one_probe(servers):
    """The tcp or http checks of one backend for every service in front of it: one probe, each
    check gets its answer under its own host and service; a check that differs is probed apart."""
    port, srv = servers()
    same = [{**http_probe(port, "/status/200"), "host": f"web{i % 2}", "service": f"backend svc{i}"}
            for i in range(4)]
    other = {**same[0], "vhost": "intranet.example.org", "service": "backend intranet"}
    results = poll.probe_results(same + [other])
    assert [(h, s, state) for h, s, state, _ in results] == [
        ("web0", "backend svc0", poll.OK), ("web1", "backend svc1", poll.OK), ("web0", "backend svc2", poll.OK),
        ("web1", "backend svc3", poll.OK), ("web0", "backend intranet", poll.OK)]
    assert len({line for *_, line in results[:4]}) == 1
    assert sorted(h.split(":")[0] for h in srv.hosts) == ["intranet.example.org", "www.example.org"], \
        "two probes for five checks"


def test_certificate_expiry_read_from_der_matches_openssl(tmp_path):
    _key, crt = certificate(tmp_path, 45)
    der = ssl.PEM_cert_to_DER_cert(crt.read_text())
    end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(crt)], capture_output=True,
                         text=True, check=True).stdout.strip().split("=", 1)[1]
    assert poll.cert_expiry(der) == (ssl.cert_time_to_seconds(end), "days45.example.org")
    with pytest.raises(ValueError):
        poll.cert_expiry(der[:40])


def test_certificate_verdict_edges():
    now = 1_800_000_000.0
    day = 86400
    assert poll.cert_verdict(now + 31 * day, "a", 30, 14, now)[0] == poll.OK
    assert poll.cert_verdict(now + 30 * day + 5, "a", 30, 14, now)[0] == poll.WARNING, "30 days left: warn at 30"
    assert poll.cert_verdict(now + 14 * day + 5, "a", 30, 14, now)[0] == poll.CRITICAL, "14 days left: crit at 14"
    state, line = poll.cert_verdict(now + 5 * 3600 + 9, "a", 30, 14, now)
    assert (state, line.split(" (")[0]) == (poll.CRITICAL, "CRITICAL - Certificate 'a' expires in 5 hours")
    state, line = poll.cert_verdict(now - 60, "a", 30, 14, now)
    assert state == poll.CRITICAL and line.startswith("CRITICAL - Certificate 'a' expired on ")


@pytest.fixture
def udp_responder() -> Iterator[int]:
    """A UDP server on 127.0.0.1: a DNS query gets a NOERROR answer (its question repeated), anything
    else an echo."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(4096)
            except socket.timeout:
                continue
            if len(data) > 12 and data[2] == 0x01:   # a query with RD: the answer, QR set, no records
                s.sendto(data[:2] + struct.pack("!HHHHH", 0x8180, 1, 0, 0, 0) + data[12:], peer)
            else:
                s.sendto(b"echo " + data, peer)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(2)
    s.close()


def test_udp_probes_use_check_anycastlb_udp(udp_responder):
    base = {"host": "kdc1", "kind": "udp", "address": "127.0.0.1", "timeout": 1}
    probes = [{**base, "service": "any", "port": udp_responder, "send": "anycastlb-probe"},
              {**base, "service": "dns", "port": udp_responder, "send": "x", "dns": "www.example.org",
               "dns_type": "AAAA"},
              {**base, "service": "closed", "port": closed_port(), "send": "x"}]
    res = {s: (state, line) for _h, s, state, line in poll.probe_results(probes)}
    assert res["any"][0] == poll.OK and res["any"][1].startswith(f"OK: 127.0.0.1 port {udp_responder}/udp answered")
    assert res["dns"][0] == poll.OK and "NOERROR, 0 answer record(s)" in res["dns"][1]
    assert res["closed"][0] == poll.CRITICAL and "refused (ICMP port unreachable)" in res["closed"][1]
    # the same decision as the plugin run on its own
    state = udp.main(["-H", "127.0.0.1", "-p", str(udp_responder), "--dns", "www.example.org", "--dns-type", "AAAA"])
    assert state == res["dns"][0]


def test_probes_past_the_run_deadline_are_unknown():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        probes = [http_probe(silent.getsockname()[1], f"/{i}") for i in range(3)]
        t0 = time.monotonic()
        res = poll.probe_results(probes, timeout=5, concurrency=2, deadline=0.3)
        took = time.monotonic() - t0
    assert [r[2] for r in res] == [poll.UNKNOWN] * 3
    assert res[0][3] == "UNKNOWN - not probed within the poller's 0.3 s (3 probes, at most 2 at a time)"
    assert took < 5, "the run does not wait for the probes' own timeout"


def test_a_run_hands_in_probe_results_with_the_others(tmp_path, servers):
    port, _srv = servers()
    out = tmp_path / "cmd.txt"
    out.touch()
    spec = {"haproxy": [], "bird": {}, "probes": [http_probe(port, "/status/200"), http_probe(port, "/status/500")]}
    state, line = poll.run(spec, str(out))
    assert state == poll.OK and line.startswith("OK: 2 results handed to Icinga2 (1 OK, 1 CRITICAL)")
    assert "2 network probes" in line
    got = {m.group(3): int(m.group(4)) for m in map(LINE.match, out.read_text().splitlines())}
    assert got == {"probe /status/200": poll.OK, "probe /status/500": poll.CRITICAL}


def test_network_checks_are_passive_and_probed_by_the_poller(campus_catalog):
    mon = compile_catalog(campus_catalog).nodes["mon1"]
    files = {f.path: f.content for f in icinga2.render(mon, {}, "/")}
    spec = json.loads(files[icinga2.POLL_SPEC])
    services = files[f"{icinga2.OURS}/services.conf"]
    net = [c for c in mon["monitoring"]["checks"] if c["type"] in ("http", "https", "tcp", "udp")]
    names = {c["name"] for c in net if not c.get("certificate_only")}
    names |= {c["name"] + " certificate" for c in net if c["type"] == "https" or c.get("tls")}
    assert net and sorted(p["service"] for p in spec["probes"]) == sorted(names)
    by_name = {p["service"]: p for p in spec["probes"]}
    for name in names:
        body = re.search(rf'^object Service "{re.escape(name)}" \{{\n(.*?)^\}}', services, re.M | re.S).group(1)
        assert 'import "anycastlb-passive"' in body, name
    assert by_name["vip www 192.0.2.10 80/tcp"] == {
        "host": "vip-www", "service": "vip www 192.0.2.10 80/tcp", "kind": "http", "address": "192.0.2.10",
        "port": 80, "vhost": "www.example.org", "uri": "/healthz", "tls": False, "sni": False, "expect": [301]}
    cert = by_name["vip www 2001:db8:1::10 443/tcp certificate"]
    assert (cert["kind"], cert["days"], cert["sni"], cert["vhost"]) == ("certificate", [30, 14], True,
                                                                       "www.example.org")
    kdc = by_name["anycast kdc 88/udp on kdc2"]
    assert (kdc["kind"], kdc["address"], kdc["port"], kdc["timeout"]) == ("udp", "198.51.100.42", 88, 5)
    assert by_name["backend imap mail2:993"]["kind"] == "tcp"
    # "check now" still runs the plugin the object names
    body = re.search(r'^object Service "vip www 192.0.2.10 80/tcp" \{\n(.*?)^\}', services, re.M | re.S).group(1)
    assert 'check_command = "http"' in body and 'vars.http_expect = "301"' in body
