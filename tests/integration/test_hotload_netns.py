"""Certificates hot-loaded into a running HAProxy through its runtime API, in a network namespace.

One namespace (documentation prefixes on its ``lo`` only): a real HAProxy 2.6 in
master-worker mode, started and driven by :class:`ServiceControl` in direct mode with
the node's files under a temp root, terminating TLS for one VIP with a certificate of a
self-made CA (anycastlb.lab.pki); a python backend behind it. A client in the namespace
trusts that CA and makes a new TLS connection every 20 ms while certificates change.

What a user would see:
- a renewed certificate is served by the same workers (no reload), with 0 failed
  requests, and the file on disk holds it too (a later reload serves the same one);
- a certificate whose key does not match is refused, and the served one stays;
- when the runtime swap is not possible (simulated: the control's runtime API call
  raises) the state falls back to a checked reload and says so.
Teardown kills only the PIDs started here and deletes only our namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from anycastlb.apply import apply_daemon
from anycastlb.certs import cert_info
from anycastlb.lab.direct import DirectControl
from anycastlb.lab.pki import LabCA, Leaf
from anycastlb.service import ServiceError, parse_show_proc, unix_query

from netns_node import NetnsNode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "haproxy", "openssl")),
                       reason="needs ip, haproxy and openssl"),
]

VIP, WEB, NAME = "192.0.2.10", "203.0.113.31", "www.example.org"
CATALOG = f"""\
bgp: {{asn: 64512}}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
nodes:
  rr1: {{address: 198.51.100.11, roles: [route-reflector]}}
  lb1: {{address: 198.51.100.21}}
clusters:
  edge: {{nodes: [lb1]}}
services:
  www:
    mode: http
    vip: {VIP}
    cluster: edge
    ports: [443]
    backend_port: 8080
    tls: {{certificate: www}}
    check: {{http: {{path: /}}, interval: 200ms, rise: 1, fall: 2}}
    backends:
      web1: {{address: {WEB}}}
"""

# New TLS connection per request, trusting only the lab CA; prints failures and the serials seen.
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


class Node(NetnsNode):
    """A HAProxy node with a web backend, and the CA its certificates come from."""

    def __init__(self) -> None:
        super().__init__("hl", CATALOG)
        self.ca = LabCA(self.base / "ca")

    def up(self) -> None:
        self.namespace(VIP, WEB)
        www = self.base / "www"
        www.mkdir()
        (www / "index.html").write_text("ok\n")
        self.spawn([sys.executable, "-m", "http.server", "8080", "--bind", WEB, "--directory", str(www)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def apply(self, leaf: Leaf, ctl: Any = None) -> Any:
        store = {"certificates": {"www": {"cert": leaf.cert, "key": leaf.key}}, "bgp_passwords": {}}
        return apply_daemon("haproxy", self.model, store, root=self.root, control=ctl or self.ctl)

    def client(self, seconds: float) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", CLIENT, str(seconds),
                                 str(self.ca.cert_path), VIP, NAME, "/"], stdout=subprocess.PIPE, text=True)

    def served_serial(self) -> str:
        p = self.client(0.01)
        out, _ = p.communicate(timeout=30)
        doc = json.loads(out)
        assert doc["failures"] == 0, doc
        return doc["serials"][-1]

    def workers(self) -> tuple[int, ...]:
        return self.ctl.haproxy_workers()

    def bundle_on_disk(self) -> str:
        return Path(self.root, "etc/haproxy/certs/anycastlb-www.pem").read_text()

    def stop_haproxy(self) -> None:
        """SIGKILL to the master and every worker, old ones too (a test may have left any state)."""
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


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _serving() -> Any:
    def ok(node: Node) -> bool:
        try:
            node.served_serial()
            return True
        except (AssertionError, ValueError, IndexError):
            return False
    return ok


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = Node()
    try:
        n.up()
        first = n.ca.issue([NAME])
        res = n.apply(first)
        assert res.result is True and res.reloaded, res.comment
        wait_for(lambda: _serving()(n), 15, "HAProxy serving TLS with the first certificate")
        assert n.served_serial() == cert_info(first.cert).serial
        yield n
    finally:
        n.down()


def test_a_renewed_certificate_is_swapped_in_without_reload_or_failed_request(node: Node) -> None:
    workers = node.workers()
    renewed = node.ca.issue([NAME])
    load = node.client(3.0)
    time.sleep(1.0)
    res = node.apply(renewed)
    out, _ = load.communicate(timeout=60)
    doc = json.loads(out)
    assert res.result is True, res.comment
    assert not res.reloaded and "runtime API, no reload" in res.comment and "reload" not in res.changes
    assert "PRIVATE" not in res.comment and "PRIVATE" not in json.dumps(res.changes)
    assert node.workers() == workers
    serial = cert_info(renewed.cert).serial
    assert node.served_serial() == serial
    assert doc["failures"] == 0 and doc["requests"] > 20, doc
    assert doc["serials"][-1] == serial and len(doc["serials"]) == 2, doc
    assert cert_info(node.bundle_on_disk()).serial == serial
    again = node.apply(renewed)
    assert again.result is True and "desired state" in again.comment


def test_a_key_that_does_not_match_is_refused_and_the_served_certificate_stays(node: Node) -> None:
    before, workers = node.served_serial(), node.workers()
    good, other = node.ca.issue([NAME]), node.ca.issue([NAME])
    res = node.apply(Leaf(cert=good.cert, key=other.key))
    assert res.result is False and "untouched" in res.comment, res.comment
    assert "PRIVATE" not in res.comment
    assert node.served_serial() == before and node.workers() == workers
    assert cert_info(node.bundle_on_disk()).serial == before


class NoRuntimeApi(DirectControl):
    """The real control, except that its runtime certificate swap fails (as when the API is unavailable)."""

    def set_ssl_cert(self, crt: str, pem: str) -> str:
        raise ServiceError(f"set ssl cert {crt}: simulated failure")


def test_a_failed_runtime_swap_falls_back_to_a_checked_reload_and_says_so(node: Node) -> None:
    workers = node.workers()
    ctl = NoRuntimeApi("direct", root=node.root, prefix=["ip", "netns", "exec", node.ns])
    renewed = node.ca.issue([NAME])
    res = node.apply(renewed, ctl=ctl)
    assert res.result is True and res.reloaded, res.comment
    assert "runtime certificate swap failed" in res.comment and "reloaded instead" in res.comment
    assert "haproxy reloaded" in res.comment
    wait_for(lambda: node.workers() != workers, 10, "a new worker")
    assert node.served_serial() == cert_info(renewed.cert).serial
