"""healthd's protocol probes: the DNS query and the Kerberos AS-REQ, and their verdicts.

The DNS probe runs against a real resolver (dnsmasq, from .ci/setup) on the loopback
address, the Kerberos probe against a real KDC (MIT krb5kdc, krb5-kdc from .ci/setup);
the AS-REQ is read back by a real DER parser (``openssl asn1parse``). The verdict's
table is fed KRB-ERROR answers built as RFC 4120 defines them (section 5.9.1), for the
errors a healthy lab KDC never sends.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from anycastlb import probes
from anycastlb.healthd import ConfigError, DnsWatch, KerberosWatch, parse_watch
from anycastlb.healthd_main import dns_probe, kerberos_probe
from anycastlb.probes import _ctx, _gstr, _int, _seq, _tlv


# ------------------------------------------------------------------ DNS messages


def test_dns_query_is_one_recursive_question() -> None:
    qid, msg = probes.dns_query("Example.org.", "SOA", qid=0x1234)
    assert qid == 0x1234
    assert msg[:12] == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert msg[12:] == b"\x07Example\x03org\x00" + struct.pack("!HH", 6, 1)


def _answer(query: bytes, rcode: int = 0, ancount: int = 0, qr: bool = True, qid: int | None = None) -> bytes:
    (orig,) = struct.unpack("!H", query[:2])
    flags = (0x8000 if qr else 0) | 0x0180 | rcode
    return struct.pack("!HHHHHH", orig if qid is None else qid, flags, 1, ancount, 0, 0) + query[12:]


@pytest.mark.parametrize("kw,ok,reason", [
    ({}, True, "NOERROR, 0 answer record(s)"),
    ({"ancount": 2}, True, "NOERROR, 2 answer record(s)"),
    ({"rcode": 2}, False, "DNS answer SERVFAIL"),
    ({"rcode": 3}, False, "DNS answer NXDOMAIN"),
    ({"rcode": 5}, False, "DNS answer REFUSED"),
    ({"qr": False}, False, "not a DNS response (QR unset)"),
    ({"qid": 1}, False, "DNS answer to another query (id differs)"),
])
def test_dns_verdict(kw: dict[str, object], ok: bool, reason: str) -> None:
    _qid, query = probes.dns_query("example.org", "A", qid=7)
    assert probes.dns_verdict(query, _answer(query, **kw)) == (ok, reason)  # type: ignore[arg-type]


def test_dns_verdict_refuses_short_and_foreign_answers() -> None:
    _qid, query = probes.dns_query("example.org", "A", qid=7)
    assert probes.dns_verdict(query, b"\x00\x07") == (False, "short DNS answer (2 bytes)")
    _q2, other = probes.dns_query("example.net", "A", qid=7)
    assert probes.dns_verdict(query, _answer(other)) == (False, "DNS answer does not repeat the question")


def test_dns_name_limits() -> None:
    with pytest.raises(ValueError, match="1 to 63"):
        probes.dns_query("a" * 64 + ".org", "A")


# ------------------------------------------------------------------ Kerberos messages


def test_as_req_is_der_that_openssl_reads() -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    msg = probes.as_req("EXAMPLE.ORG", nonce=12345, now=0)
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER", "-i"], input=msg, capture_output=True,
                         check=True).stdout.decode()
    lines = [" ".join(line.split(":", 1)[1].split()) for line in out.splitlines()]
    assert lines[0].startswith("d=0") and "appl [ 10 ]" in lines[0]   # AS-REQ
    assert "INTEGER :05" in lines[3] and "INTEGER :0A" in lines[5]    # pvno 5, msg-type 10
    assert sum("GENERALSTRING" in x for x in lines) == 5               # krbtgt/realm (client), realm, krbtgt/realm
    assert any("GENERALIZEDTIME :19700101010000Z" in x for x in lines)
    assert any("INTEGER :3039" in x for x in lines)                   # the nonce
    assert msg.count(b"EXAMPLE.ORG") == 3 and msg.count(b"krbtgt") == 2   # client and server: krbtgt/EXAMPLE.ORG


def krb_error(code: int, realm: str) -> bytes:
    """A KRB-ERROR as RFC 4120 5.9.1 lays it out."""
    body = _seq(_ctx(0, _int(5)), _ctx(1, _int(30)), _ctx(4, _tlv(0x18, b"20261201000000Z")), _ctx(5, _int(0)),
                _ctx(6, _int(code)), _ctx(9, _gstr(realm)),
                _ctx(10, _seq(_ctx(0, _int(2)), _ctx(1, _seq(_gstr("krbtgt"), _gstr(realm))))))
    return _tlv(0x7E, body)


@pytest.mark.parametrize("code,realm,ok,reason", [
    (6, "EXAMPLE.ORG", False, "KDC answers KDC_ERR_C_PRINCIPAL_UNKNOWN (krbtgt/EXAMPLE.ORG unknown: not a KDC of "
                              "EXAMPLE.ORG)"),
    (25, "EXAMPLE.ORG", True, "KDC of EXAMPLE.ORG answers (KDC_ERR_PREAUTH_REQUIRED)"),
    (18, "EXAMPLE.ORG", True, "KDC of EXAMPLE.ORG answers (KDC_ERR_CLIENT_REVOKED)"),
    (12, "EXAMPLE.ORG", True, "KDC of EXAMPLE.ORG answers (KDC_ERR_POLICY)"),
    (68, "EXAMPLE.ORG", False, "KDC answers KDC_ERR_WRONG_REALM"),
    (7, "EXAMPLE.ORG", False, "KDC answers KDC_ERR_S_PRINCIPAL_UNKNOWN"),
    (25, "OTHER.ORG", False, "KDC answers for realm 'OTHER.ORG', not 'EXAMPLE.ORG' (KDC_ERR_PREAUTH_REQUIRED)"),
])
def test_krb_verdict(code: int, realm: str, ok: bool, reason: str) -> None:
    assert probes.krb_verdict("EXAMPLE.ORG", krb_error(code, realm)) == (ok, reason)


def test_krb_verdict_refuses_garbage() -> None:
    ok, reason = probes.krb_verdict("EXAMPLE.ORG", b"kdc1 88\n")
    assert not ok and reason.startswith("malformed Kerberos answer")   # "k" is 0x6b, the AS-REP tag
    assert probes.krb_verdict("EXAMPLE.ORG", b"HTTP/1.0 400") == (False, "not a Kerberos answer (tag 0x48)")
    assert probes.krb_verdict("EXAMPLE.ORG", b"\x7e\x05\x30") == (False, "malformed Kerberos answer: truncated DER")
    assert probes.krb_verdict("EXAMPLE.ORG", _tlv(0x6B, _seq(_ctx(0, _int(5)), _ctx(1, _int(11))))) == (
        True, "KDC of EXAMPLE.ORG answers (AS-REP)")
    assert not probes.krb_verdict("EXAMPLE.ORG", _tlv(0x6B, _seq(_ctx(0, _int(5)), _ctx(1, _int(13)))))[0]


# ------------------------------------------------------------------ healthd.json


def test_watch_config_of_the_new_kinds() -> None:
    w = parse_watch("w", {"type": "dns", "address": "192.0.2.53", "name": "example.org", "qtype": "SOA"})
    assert w == DnsWatch(address="192.0.2.53", name="example.org", qtype="SOA")
    k = parse_watch("w", {"type": "kerberos", "address": "192.0.2.88", "realm": "EXAMPLE.ORG", "protocol": "tcp"})
    assert k == KerberosWatch(address="192.0.2.88", realm="EXAMPLE.ORG", protocol="tcp")
    for bad, msg in (({"type": "dns", "address": "192.0.2.53", "name": "a b"}, "w.name: not a DNS name"),
                     ({"type": "dns", "address": "192.0.2.53", "name": "x", "qtype": "ANY"}, "w.qtype: must be"),
                     ({"type": "dns", "address": "192.0.2.53"}, "w.name: required for a dns watch"),
                     ({"type": "kerberos", "address": "192.0.2.88", "realm": "ex\nample"}, "not a Kerberos realm"),
                     ({"type": "kerberos", "address": "192.0.2.88", "realm": "A", "protocol": "sctp"}, "udp or tcp")):
        with pytest.raises(ConfigError, match=msg):
            parse_watch("w", bad)


# ------------------------------------------------------------------ a real resolver


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """dnsmasq on 127.0.0.1:<port> that knows www.example.org and forwards nothing."""
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.path.exists(binary):
        pytest.skip("dnsmasq is not installed (bash .ci/setup installs dnsmasq-base)")
    port = _free_udp_port()
    proc = subprocess.Popen([binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                             "--pid-file=", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                             "--host-record=www.example.org,192.0.2.80", "--user=root", "--log-facility=-"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _qid, q = probes.dns_query("www.example.org", "A")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                try:
                    s.sendto(q, ("127.0.0.1", port))
                    if s.recv(512):
                        break
                except OSError:
                    time.sleep(0.05)
        else:
            pytest.fail("dnsmasq did not answer in 5 s")
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)


def test_dns_probe_against_dnsmasq(dnsmasq: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, proc = dnsmasq

    def probe(name: str, qtype: str = "A") -> tuple[bool, str, bool]:
        return asyncio.run(dns_probe(DnsWatch(address="127.0.0.1", port=port, name=name, qtype=qtype,
                                              timeout_ms=1000)))

    ok, reason, hard = probe("www.example.org")
    assert ok and not hard and reason == f"dns 127.0.0.1:{port}/udp: NOERROR, 1 answer record(s)"
    ok, reason, _hard = probe("nothing.example.net")   # no upstream: dnsmasq cannot answer it
    assert not ok and reason.startswith(f"dns 127.0.0.1:{port}/udp: DNS answer ")
    proc.send_signal(signal.SIGTERM)
    proc.wait(5)
    ok, reason, hard = probe("www.example.org")      # the port is closed: ICMP unreachable
    assert (ok, hard) == (False, True) and reason.endswith("connection refused")


def test_kerberos_probe_times_out_on_a_silent_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # bound, never answers
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        ok, reason, hard = asyncio.run(kerberos_probe(KerberosWatch(address="127.0.0.1", port=port,
                                                                    realm="EXAMPLE.ORG", timeout_ms=200)))
        data = s.recv(4096)
    assert (ok, hard) == (False, False) and reason == f"kerberos 127.0.0.1:{port}/udp: no answer in 200 ms"
    assert data.startswith(b"\x6a") and b"krbtgt" in data   # what it sent is an AS-REQ


@pytest.fixture
def krb5kdc(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """MIT krb5kdc on 127.0.0.1:<port> (udp and tcp) serving EXAMPLE.ORG from a fresh database."""
    from anycastlb.lab.protocols import kdc_conf
    if not shutil.which("krb5kdc", path="/usr/sbin:/usr/bin") or not shutil.which("kdb5_util", path="/usr/sbin"):
        pytest.skip("krb5kdc is not installed (bash .ci/setup installs krb5-kdc)")
    port = _free_udp_port()
    conf = kdc_conf("EXAMPLE.ORG", port).replace("/var/lib/krb5kdc", str(tmp_path)).replace(
        "/etc/krb5kdc", str(tmp_path)).replace("/var/log", str(tmp_path))
    (tmp_path / "kdc.conf").write_text(conf.replace("[kdcdefaults]\n", f"[kdcdefaults]\n    kdc_listen = 127.0.0.1:{port}\n"
                                                    f"    kdc_tcp_listen = 127.0.0.1:{port}\n", 1)
                                       .replace(f"    kdc_tcp_listen = {port}\n", ""))
    (tmp_path / "krb5.conf").write_text("[libdefaults]\n    default_realm = EXAMPLE.ORG\n")
    env = {**os.environ, "KRB5_CONFIG": str(tmp_path / "krb5.conf"), "KRB5_KDC_PROFILE": str(tmp_path / "kdc.conf")}
    subprocess.run(["/usr/sbin/kdb5_util", "-r", "EXAMPLE.ORG", "-P", "test", "create", "-s"], env=env,
                   check=True, capture_output=True, timeout=30)
    proc = subprocess.Popen(["/usr/sbin/krb5kdc", "-n", "-r", "EXAMPLE.ORG"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                try:
                    s.sendto(probes.as_req("EXAMPLE.ORG"), ("127.0.0.1", port))
                    if s.recv(4096):
                        break
                except OSError:
                    time.sleep(0.05)
        else:
            pytest.fail(f"krb5kdc did not answer in 5 s: {(tmp_path / 'krb5kdc.log').read_text()[-500:] if (tmp_path / 'krb5kdc.log').exists() else ''}")
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_kerberos_probe_against_krb5kdc(krb5kdc: tuple[int, subprocess.Popen[bytes]], protocol: str) -> None:
    port, proc = krb5kdc

    def probe(realm: str) -> tuple[bool, str, bool]:
        return asyncio.run(kerberos_probe(KerberosWatch(address="127.0.0.1", port=port, realm=realm,
                                                        protocol=protocol, timeout_ms=1000)))

    ok, reason, hard = probe("EXAMPLE.ORG")
    assert (ok, hard) == (True, False)
    assert reason == f"kerberos 127.0.0.1:{port}/{protocol}: KDC of EXAMPLE.ORG answers (AS-REP)"
    ok, reason, _hard = probe("OTHER.ORG")   # a realm this KDC does not serve
    assert not ok and reason.endswith("(krbtgt/OTHER.ORG unknown: not a KDC of OTHER.ORG)"), reason
    proc.send_signal(signal.SIGSTOP)          # alive, port open, answers nothing
    try:
        ok, reason, hard = probe("EXAMPLE.ORG")
        assert not ok and ("no answer in 1000 ms" in reason or "timed out" in reason), reason
    finally:
        proc.send_signal(signal.SIGCONT)


def test_icinga_udp_plugin_asks_the_kdc(krb5kdc: tuple[int, subprocess.Popen[bytes]],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from anycastlb.plugins.check_anycastlb_udp import CRITICAL, OK, main
    port, _proc = krb5kdc
    assert main(["-H", "127.0.0.1", "-p", str(port), "--krb", "EXAMPLE.ORG", "-t", "2"]) == OK
    assert "KDC of EXAMPLE.ORG answers" in capsys.readouterr().out
    assert main(["-H", "127.0.0.1", "-p", str(port), "-t", "1.5"]) == CRITICAL   # a KDC ignores a plain datagram
    assert capsys.readouterr().out.startswith(f"CRITICAL: no answer from 127.0.0.1 port {port}/udp")


def test_icinga_udp_plugin_asks_the_resolver(dnsmasq: tuple[int, subprocess.Popen[bytes]],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from anycastlb.plugins.check_anycastlb_udp import CRITICAL, OK, main
    port, _proc = dnsmasq
    assert main(["-H", "127.0.0.1", "-p", str(port), "--dns", "www.example.org", "-t", "2"]) == OK
    assert "NOERROR, 1 answer record(s)" in capsys.readouterr().out
    assert main(["-H", "127.0.0.1", "-p", str(port), "--dns", "nothing.example.net", "-t", "2"]) == CRITICAL
    assert capsys.readouterr().out.startswith(f"CRITICAL: 127.0.0.1 port {port}/udp: DNS answer ")


def test_icinga_checks_a_dns_service_with_queries() -> None:
    from anycastlb.compiler import compile_catalog
    from anycastlb.render.icinga2 import objects
    fleet = compile_catalog(Path(__file__).resolve().parents[1] / "data" / "operator-fleet.yaml")
    services = {s["name"]: s for s in objects(fleet.nodes["mon1"])["services"]}
    udp = services["vip resolver 192.0.2.53 53/udp"]
    assert udp["command"] == "anycastlb-udp"
    assert (udp["vars"]["anycastlb_udp_dns"], udp["vars"]["anycastlb_udp_dns_type"]) == ("www.example.org", "A")
    assert "anycastlb_udp_dns" not in services["vip resolver 192.0.2.53 53/tcp"]["vars"]
    kdc = services["vip kdc 192.0.2.88 88/udp"]   # a KDC is asked an AS-REQ (it ignores other datagrams)
    assert kdc["vars"]["anycastlb_udp_krb"] == "EXAMPLE.ORG" and "anycastlb_udp_dns" not in kdc["vars"]
    assert services["anycast kdc 88/udp on dns2"]["vars"]["anycastlb_udp_krb"] == "EXAMPLE.ORG"
