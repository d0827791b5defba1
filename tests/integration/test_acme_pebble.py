"""ACME for real: Pebble (Debian's RFC 8555 test CA) issues through HAProxy's challenge routing.

One network namespace (documentation prefixes on its ``lo``): Pebble (its API served
with a certificate of a self-made lab CA), dnsmasq answering the service's names with
the VIP, a real HAProxy 2.6 rendered from a catalog with ``tls: {acme: true}`` and
driven by :class:`ServiceControl` under a temp root, a python backend, and the issuer
(``python -m anycastlb.acme_issuer``, certbot's ``acme`` library) with its token server
on the issuer's address. Pebble validates HTTP-01 on the VIP's port 80; HAProxy routes
``/.well-known/acme-challenge/`` to the issuer.

What a user would see:
- the service gets a certificate from the lab CA and HAProxy serves it (hot-loaded over
  the placeholder, no reload);
- a forced renewal changes the served serial with 0 failed requests under load and the
  same worker PIDs;
- a renewal the CA refuses (it cannot resolve the name any more) keeps the old
  certificate, in the store and served.
Teardown kills only the PIDs started here and deletes only our namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from anycastlb.acme_issuer import load_store
from anycastlb.apply import apply_daemon
from anycastlb.certs import cert_info
from anycastlb.compiler import compile_catalog
from anycastlb.lab.pki import LabCA
from anycastlb.service import ServiceControl, parse_show_proc, unix_query

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "haproxy", "openssl", "pebble", "dnsmasq")),
                       reason="needs ip, haproxy, openssl, pebble and dnsmasq"),
]
pytest.importorskip("acme", reason="needs certbot's acme package (pip install '.[acme]')")

VIP, WEB, ISSUER, PEBBLE, DNS, NAME = ("192.0.2.10", "203.0.113.31", "198.51.100.5", "198.51.100.9",
                                      "198.51.100.53", "www.example.org")
CATALOG = f"""\
bgp: {{asn: 64512}}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
acme:
  directory: https://{PEBBLE}:14000/dir
  contact: hostmaster@example.org
  renew_before: 10d
nodes:
  master: {{address: {ISSUER}, roles: [salt-master, route-reflector]}}
  lb1: {{address: 198.51.100.21}}
  web1: {{address: {WEB}}}
clusters:
  edge: {{nodes: [lb1]}}
services:
  www:
    mode: http
    vip: {VIP}
    cluster: edge
    ports: [80, 443]
    backend_port: 8080
    redirect_http: true
    tls: {{acme: true}}
    apache: {{server_name: {NAME}, aliases: [example.org]}}
    check: {{http: {{path: /healthz}}, interval: 200ms, rise: 1, fall: 2}}
    backends: [web1]
"""

CLIENT = textwrap.dedent("""
    import json, socket, ssl, sys, time
    seconds, cafile, vip, name, path = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    ctx = ssl.create_default_context(cafile=cafile)
    n = fail = 0; errors = []; serials = []
    end = time.monotonic() + seconds
    while True:
        n += 1
        try:
            with ctx.wrap_socket(socket.create_connection((vip, 443), timeout=2), server_hostname=name) as t:
                t.sendall(f"GET {path} HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n".encode())
                data = b""
                while True:
                    chunk = t.recv(65536)
                    if not chunk: break
                    data += chunk
                s = t.getpeercert()["serialNumber"]
            if not serials or serials[-1] != s: serials.append(s)
            status = int(data.split(b" ", 2)[1])
            if status != 200: fail += 1; errors.append(status)
        except Exception as exc:
            fail += 1; errors.append(repr(exc))
        if time.monotonic() >= end: break
        time.sleep(0.02)
    print(json.dumps({"requests": n, "failures": fail, "errors": errors[:5], "serials": serials}))
""")


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=30).stdout


class Lab:
    """Our namespace, temp root, lab CA, and the PIDs we started (nothing else)."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="aclbac-", dir="/tmp"))
        self.ns = f"aclbac{secrets.token_hex(2)}"
        self.root = str(self.base / "root")
        self.store = self.base / "acme-store"
        self.ctl = ServiceControl("direct", root=self.root, prefix=["ip", "netns", "exec", self.ns])
        self.ca = LabCA(self.base / "labca")
        self.procs: dict[str, subprocess.Popen[str]] = {}
        (self.base / "catalog.yaml").write_text(CATALOG)
        fleet = compile_catalog(self.base / "catalog.yaml")
        self.model = fleet.nodes["lb1"]
        (self.base / "issuer.json").write_text(json.dumps(fleet.nodes["master"]["acme"]))
        self.trust = self.base / "trust.pem"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.base / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=log,
                                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})

    def up(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        for addr in (VIP, WEB, ISSUER, PEBBLE, DNS):
            sh("ip", "-n", self.ns, "addr", "add", f"{addr}/32", "dev", "lo")
        www = self.base / "www"
        www.mkdir()
        (www / "healthz").write_text("ok\n")
        self.spawn("web", [sys.executable, "-m", "http.server", "8080", "--bind", WEB, "--directory", str(www)])
        self.start_dns()
        api = self.ca.issue([PEBBLE], days=2)
        (self.base / "pebble-cert.pem").write_text(api.cert)
        (self.base / "pebble-key.pem").write_text(api.key)
        (self.base / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"{PEBBLE}:14000", "managementListenAddress": f"{PEBBLE}:15000",
            "certificate": str(self.base / "pebble-cert.pem"), "privateKey": str(self.base / "pebble-key.pem"),
            "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        self.spawn("pebble", ["pebble", "-config", str(self.base / "pebble.json"), "-dnsserver", f"{DNS}:53"],
                   env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"})
        wait_for(lambda: self.ok([sys.executable, "-c", f"import socket; socket.create_connection(('{PEBBLE}', "
                                  "15000), 0.2).close()"]), 15, "pebble")

    def start_dns(self) -> None:
        self.spawn("dns", ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                           f"--listen-address={DNS}", "--port=53", f"--address=/{NAME}/{VIP}",
                           f"--address=/example.org/{VIP}", f"--pid-file={self.base}/dnsmasq.pid"])

    def stop(self, name: str) -> None:
        p = self.procs.pop(name)
        p.terminate()
        p.wait(timeout=10)

    def ok(self, argv: list[str]) -> bool:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              timeout=20).returncode == 0

    def pebble_root(self) -> str:
        """Pebble's issuing root (it changes each run), fetched from its management API."""
        code = (f"import ssl, urllib.request; ctx = ssl.create_default_context(cafile='{self.ca.cert_path}'); "
                f"print(urllib.request.urlopen('https://{PEBBLE}:15000/roots/0', context=ctx).read().decode())")
        return subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", code], capture_output=True,
                              text=True, check=True, timeout=20).stdout

    def issuer(self, *args: str) -> tuple[int, Any]:
        """One pass of the issuer, in the namespace (its token server listens on the issuer's address)."""
        p = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "anycastlb.acme_issuer",
                            str(self.base / "issuer.json"), str(self.store), "--ca", str(self.ca.cert_path),
                            *args], capture_output=True, text=True, timeout=180)
        return p.returncode, json.loads(p.stdout or "null") if p.stdout.strip() else p.stderr

    def apply(self) -> Any:
        store = {"certificates": load_store(self.store), "bgp_passwords": {}}
        return apply_daemon("haproxy", self.model, store, root=self.root, control=self.ctl)

    def client(self, seconds: float) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", CLIENT, str(seconds),
                                 str(self.trust), VIP, NAME, "/healthz"], stdout=subprocess.PIPE, text=True)

    def served(self) -> dict[str, Any]:
        out, _ = self.client(0).communicate(timeout=30)
        return json.loads(out)

    def down(self) -> None:
        pids: list[int] = []
        try:
            info = parse_show_proc(unix_query(self.ctl.path(self.ctl.paths.haproxy_master_socket), "show proc"))
            pids += [info.master_pid] + [p for p, _ in info.workers] + list(info.old_workers)
        except (OSError, ValueError):
            pass
        pid = self.ctl.pid("haproxy")   # the master from its pidfile, should its socket be gone
        pids += [pid] if pid else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def wait_for(pred: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    the_lab = Lab()
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="module")
def issued(lab: Lab) -> Lab:
    """Placeholder deployed, then the first certificate from Pebble, hot-loaded."""
    rc, out = lab.issuer("--placeholders")
    assert rc == 0 and out == {"placeholders": ["acme-www"]}, out
    res = lab.apply()
    assert res.result is True and res.reloaded, res.comment
    lab.trust.write_text(lab.pebble_root())
    start = time.monotonic()
    rc, out = lab.issuer()
    assert rc == 0 and out[0]["result"] == "issued" and out[0]["reason"].endswith("(renew_before 10 days)"), out
    workers = lab.ctl.haproxy_workers()
    res = lab.apply()
    assert res.result is True and not res.reloaded and "runtime API, no reload" in res.comment, res.comment
    assert lab.ctl.haproxy_workers() == workers
    served = lab.served()
    lab.first_issue_s = time.monotonic() - start  # type: ignore[attr-defined]
    assert served["failures"] == 0, served
    assert served["serials"] == [out[0]["serial"]]
    return lab


def test_the_service_gets_its_certificate_from_the_lab_ca_through_the_challenge_route(issued: Lab) -> None:
    stat = unix_query(os.path.join(issued.root, "run/haproxy/admin.sock"), "show stat")
    row = next(r.split(",") for r in stat.splitlines() if r.startswith("acme-challenge,issuer,"))
    head = stat.splitlines()[0].lstrip("# ").split(",")
    assert int(row[head.index("stot")]) >= 2, "Pebble validated both names through HAProxy's challenge route"
    bundle = (issued.store / "acme-www.pem").read_text()
    assert oct((issued.store / "acme-www.pem").stat().st_mode & 0o777) == "0o600"
    assert oct(issued.store.stat().st_mode & 0o777) == "0o700"
    on_disk = Path(issued.root, "etc/haproxy/certs/anycastlb-acme-www.pem")
    assert cert_info(on_disk.read_text()).serial == cert_info(bundle).serial
    assert oct(on_disk.stat().st_mode & 0o777) == "0o600"
    print(f"\nfirst issuance to served: {issued.first_issue_s:.2f} s")  # type: ignore[attr-defined]


def test_a_forced_renewal_changes_the_serial_under_load_without_reload_or_failure(issued: Lab) -> None:
    before = issued.served()["serials"][-1]
    workers = issued.ctl.haproxy_workers()
    load = issued.client(6.0)
    time.sleep(0.5)
    rc, out = issued.issuer("--force", "--service", "www")
    assert rc == 0 and out[0]["result"] == "issued" and out[0]["reason"] == "forced", out
    res = issued.apply()
    doc = json.loads(load.communicate(timeout=60)[0])
    assert res.result is True and not res.reloaded, res.comment
    assert issued.ctl.haproxy_workers() == workers
    assert doc["failures"] == 0 and doc["requests"] > 20, doc
    assert doc["serials"][0] == before and doc["serials"][-1] == out[0]["serial"] != before, doc
    print(f"\nforced renewal under load: {doc['requests']} requests, {doc['failures']} failed, "
          f"workers {workers} kept")


def test_a_renewal_the_ca_refuses_keeps_the_old_certificate(issued: Lab) -> None:
    before = cert_info((issued.store / "acme-www.pem").read_text()).serial
    issued.stop("dns")   # Pebble can no longer resolve the names: it refuses the authorizations
    try:
        rc, out = issued.issuer("--force")
    finally:
        issued.start_dns()
    assert rc == 1 and out[0]["result"] == "failed" and "the old certificate stays" in out[0]["reason"], out
    assert cert_info((issued.store / "acme-www.pem").read_text()).serial == before
    res = issued.apply()
    assert res.result is True and "desired state" in res.comment, res.comment
    assert issued.served()["serials"] == [before]
