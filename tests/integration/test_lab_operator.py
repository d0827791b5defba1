"""The operator fleet (tests/data/operator-fleet.yaml) in the lab: real Salt, real daemons.

Issue 19's "done when": the fleet written the way its services run (two LBs, two route
reflectors, www with TLS, LDAP over tcp with per-port backend ports and long idle
timeouts, an anycast DNS resolver, monitoring) comes up in the lab and serves. The
directory behind LDAP is the lab's stand-in (it answers binds, anycastlb.lab.responder);
the resolvers are real (dnsmasq, anycastlb.lab.protocols), and so are the KDCs on the same
nodes (MIT krb5kdc with a fresh database of EXAMPLE.ORG).

The issue asks for LDAP binds held idle for 10 minutes; CI cannot wait that long. The
test holds one idle for 35 s, past HAProxy's 30 s ``timeout client/server``: in mode tcp a
connected session is a tunnel, and ``timeout tunnel`` (1h) decides. benchmarks/ldap_idle.py
holds binds idle the whole 10 minutes beside a 30 s-tunnel baseline (docs/performance.md).

Three http services (shop, cart, api) share 192.0.2.82:443: the test sends real HTTPS
requests and checks which backend answers, by SNI and Host and by path, each name served
its own certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.lab]

FLEET = Path(__file__).resolve().parents[1] / "data" / "operator-fleet.yaml"
RESOLVER = "192.0.2.53/32"
KDC = "192.0.2.88/32"

# Runs in the lab's client namespace: an LDAP bind, idle, a second bind on the same connection.
LDAP_IDLE = """
import socket, sys, time
bind = bytes.fromhex("300c020101600702010304008000")
s = socket.create_connection(("192.0.2.89", int(sys.argv[1])), timeout=5)
s.sendall(bind); first = s.recv(100)
time.sleep(float(sys.argv[2]))
s.settimeout(5)
try:
    s.sendall(bind); second = s.recv(100)
except OSError as exc:
    second = repr(exc).encode()
print(first.hex(), second.hex() if second else "closed")
"""

# Runs in the client namespace: one DNS query to the resolver VIP with healthd's own probe.
DNS_QUERY = """
import asyncio
from anycastlb.healthd import DnsWatch
from anycastlb.healthd_main import dns_probe
print(asyncio.run(dns_probe(DnsWatch(address="192.0.2.53", name="www.example.org", qtype="A", timeout_ms=1000))))
"""

# Runs in the client namespace: one AS-REQ to the KDC VIP with healthd's own probe (udp or tcp).
KRB_QUERY = """
import asyncio, sys
from anycastlb.healthd import KerberosWatch
from anycastlb.healthd_main import kerberos_probe
print(asyncio.run(kerberos_probe(KerberosWatch(address="192.0.2.88", realm="EXAMPLE.ORG", protocol=sys.argv[1],
                                               timeout_ms=1000))))
"""

# Runs in the client namespace: one HTTPS GET with SNI and Host ``host``, verified against ``cafile``
# (one service's self-signed certificate): what answered, from which backend, with which certificate.
HTTPS_GET = """
import json, socket, ssl, sys
addr, port, host, path, cafile = sys.argv[1:6]
try:
    ctx = ssl.create_default_context(cafile=cafile)
    with ctx.wrap_socket(socket.create_connection((addr, int(port)), timeout=5), server_hostname=host) as t:
        t.sendall(f"GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n".encode())
        data = b""
        while chunk := t.recv(65536):
            data += chunk
        cn = dict(x[0] for x in t.getpeercert()["subject"])["commonName"]
except (OSError, ssl.SSLError) as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
head, _, body = data.partition(b"\\r\\n\\r\\n")
lines = head.decode().split("\\r\\n")
headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
print(json.dumps({"status": int(lines[0].split()[1]), "served_by": headers.get("x-served-by"), "cn": cn,
                  "body": body.decode(errors="replace")[:400]}))
"""


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0 or not shutil.which("haproxy") or not shutil.which("ip"):
        pytest.skip("the lab needs root, iproute2 and the daemons (run .ci/setup)")
    if not os.path.exists("/usr/sbin/dnsmasq"):
        pytest.skip("dnsmasq is not installed (bash .ci/setup installs dnsmasq-base)")
    if not os.path.exists("/usr/sbin/krb5kdc"):
        pytest.skip("krb5kdc is not installed (bash .ci/setup installs krb5-kdc)")
    from anycastlb.lab.cli import temporary_lab
    with temporary_lab(catalog=FLEET, tag="operator") as the_lab:
        print(the_lab.up_output)
        yield the_lab


@pytest.fixture(scope="module")
def fleet(lab):
    from anycastlb.compiler import compile_catalog
    return compile_catalog(lab.catalog)


def client_python(lab, code: str, *args: str, timeout: float = 60) -> str:
    from anycastlb.lab.net import CLIENT
    from anycastlb.lab.salt import PYTHON
    r = lab.exec(CLIENT, [PYTHON, "-c", code, *args], timeout=timeout, cwd=str(lab.repo))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_fleet_converges_and_serves(lab, fleet):
    from anycastlb.lab import fleet as fl
    assert "0 failed" in lab.up_output
    st = fl.status(lab, fleet)
    assert st["announcers"] == st["expected"]
    assert st["announcers"][RESOLVER] == ["dns1", "dns2"]
    # Every probe as the catalog says (LDAP with a bind, the resolver with DNS queries, udp and tcp).
    wrong = [p for p in st["probes"] if p["ok"] != p["allowed"]]
    assert not wrong, wrong
    assert {p["kind"] for p in st["probes"] if fleet.services[p["service"]]["mode"] != "http"} == {
        "ldap", "dns", "kerberos"}
    bad = {k: v for k, v in (st["icinga"] or {}).items() if v["state"] != "OK"}
    assert st["icinga"] and not bad, bad   # the resolver's and the KDC's udp checks ask DNS and AS-REQs too
    assert all(s == "UP" for b, servers in st["haproxy"].items() for s in servers.values()), st["haproxy"]
    assert set(st["haproxy"]) >= {"ldap-1389", "ldap-1636", "www-8080"}


def test_ldaps_port_reaches_its_own_backend_port(lab):
    out = client_python(lab, LDAP_IDLE, "636", "0").split()
    assert out[0].startswith("300c02010161070a0100") and out[1] == out[0], out


def test_ldap_bind_survives_idling_past_the_client_and_server_timeouts(lab):
    out = client_python(lab, LDAP_IDLE, "389", "35", timeout=60).split()
    assert out[0].startswith("300c02010161070a0100"), out   # BindResponse, success
    assert out[1] == out[0], f"the idle connection was closed: {out}"


def test_resolver_withdrawn_when_its_answers_stop(lab, fleet):
    from anycastlb.lab import fleet as fl
    from anycastlb.lab.faults import wait_until
    assert "NOERROR" in client_python(lab, DNS_QUERY)
    pid = lab.registry.get("dns1", "resolver-53")["pid"]
    os.kill(pid, signal.SIGSTOP)   # the process lives and its tcp port accepts; it answers nothing
    try:
        took = wait_until(lambda: fl.announcers(lab, fleet).get(RESOLVER) == ["dns2"], 15,
                          "dns1's path for the resolver VIP withdrawn", every=0.5)
        print(f"\nresolver on dns1 stopped answering -> its path gone from the route reflector in {took:.1f} s "
              f"(check interval 1 s, fall 2; timing on a shared machine)")
        assert "NOERROR" in client_python(lab, DNS_QUERY), "dns2 still answers on the VIP"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: fl.announcers(lab, fleet).get(RESOLVER) == ["dns1", "dns2"], 15, "dns1 back", every=0.5)


def test_kdc_announced_while_it_answers_withdrawn_when_it_stops(lab, fleet):
    from anycastlb.lab import fleet as fl
    from anycastlb.lab.faults import wait_until
    assert fl.announcers(lab, fleet).get(KDC) == ["dns1", "dns2"]
    for proto in ("udp", "tcp"):   # a real KDC of EXAMPLE.ORG answers healthd's AS-REQ on the VIP
        assert f"/{proto}: KDC of EXAMPLE.ORG answers (AS-REP)" in client_python(lab, KRB_QUERY, proto)
    pid = lab.registry.get("dns1", "kdc-88")["pid"]
    os.kill(pid, signal.SIGSTOP)   # krb5kdc lives and holds its ports; it answers nothing
    try:
        took = wait_until(lambda: fl.announcers(lab, fleet).get(KDC) == ["dns2"], 15,
                          "dns1's path for the KDC VIP withdrawn", every=0.5)
        print(f"\nKDC on dns1 stopped answering -> its path gone from the route reflector in {took:.1f} s "
              f"(check interval 1 s, fall 2; timing on a shared machine)")
        assert fl.announcers(lab, fleet).get(RESOLVER) == ["dns1", "dns2"], "the resolver on dns1 stays"
        assert "KDC of EXAMPLE.ORG answers (AS-REP)" in client_python(lab, KRB_QUERY, "udp"), "dns2 answers"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: fl.announcers(lab, fleet).get(KDC) == ["dns1", "dns2"], 15, "dns1 back", every=0.5)


def test_shared_vip_routes_by_host_and_path_each_with_its_own_certificate(lab):
    pki = lab.statedir / "pki"   # the lab's self-signed certificates, one per certificate name
    shop_ca, api_ca = str(pki / "shop-example-org.crt"), str(pki / "api-example-org.crt")

    def get(addr: str, port: int, host: str, path: str, cafile: str) -> dict:
        return json.loads(client_python(lab, HTTPS_GET, addr, str(port), host, path, cafile))

    # by SNI and Host: shop and api on one VIP:443, each verified against its own certificate only
    shop = get("192.0.2.82", 443, "shop.example.org", "/", shop_ca)
    assert (shop["status"], shop["served_by"], shop["cn"]) == (200, "web1", "shop.example.org"), shop
    assert "service <b>shop</b>" in shop["body"]
    api = get("192.0.2.82", 443, "api.example.org", "/", api_ca)
    assert (api["status"], api["cn"]) == (200, "api.example.org") and "service <b>api</b>" in api["body"], api
    wrong = get("192.0.2.82", 443, "api.example.org", "/", shop_ca)   # api's name is not served shop's certificate
    assert "certificate verify failed" in wrong.get("error", ""), wrong
    # by path: shop.example.org/cart goes to cart (on web2), the rest of the host to shop (on web1)
    cart = get("192.0.2.82", 443, "shop.example.org", "/cart/healthz", shop_ca)
    assert (cart["status"], cart["served_by"], cart["cn"]) == (200, "web2", "shop.example.org"), cart
    rest = get("2001:db8:5::82", 443, "shop.example.org", "/healthz", shop_ca)   # the v6 VIP: the same frontend
    assert (rest["status"], rest["served_by"]) == (200, "web1"), rest
    both = pki / "shop-and-api.crt"   # no SNI match: HAProxy may show either certificate (both have *.example.org)
    both.write_text(Path(shop_ca).read_text() + Path(api_ca).read_text())
    nobody = get("192.0.2.82", 443, "nothing.example.org", "/", str(both))   # no route claims it
    assert nobody["status"] == 404 and "no service for this host and path" in nobody["body"], nobody
    # TLS on another port: api alone on 8443
    api8443 = get("192.0.2.82", 8443, "api.example.org", "/", api_ca)
    assert api8443["status"] == 200 and "service <b>api</b>" in api8443["body"], api8443
