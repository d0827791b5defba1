"""The graceful drain's wait counts the connections an HAProxy reload left with the old worker.

One network namespace (documentation prefixes on its ``lo`` only): a real HAProxy 2.6 in
master-worker mode, started by :class:`ServiceControl` in direct mode with the node's files
under a temp root, for one tcp service in front of a Python listener that holds every
connection. A client holds 5 connections, HAProxy reloads (the old worker keeps them, the new
worker has none: what the stats socket alone would count), then the drain's wait runs as on a
node (``anycastlb.minion.wait_sessions``, in a mount namespace whose ``/run`` is the node's):
it reports the 5 at a short deadline and, with a long one, returns only after the client
closed them. About 15 s. Teardown kills only the PIDs started here and deletes our namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from anycastlb.apply import apply_daemon
from anycastlb.poll import poll_until
from anycastlb.service import parse_show_proc, unix_query

from netns_node import NetnsNode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network and mount namespaces"),
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "haproxy", "unshare", "mount")),
                       reason="needs ip, haproxy, unshare and mount"),
]

REPO = Path(__file__).resolve().parents[2]
VIP, BACKEND, HELD = "192.0.2.20", "203.0.113.25", 5
CATALOG = f"""\
bgp: {{asn: 64512}}
vip_pools: [192.0.2.0/24]
management: [198.51.100.0/24]
nodes: {{rr1: {{address: 198.51.100.11, roles: [route-reflector]}}, lb1: {{address: 198.51.100.21}}}}
clusters: {{edge: {{nodes: [lb1]}}}}
services:
  imap: {{mode: tcp, vip: {VIP}, cluster: edge, ports: [143], check: {{tcp: {{}}}},
         backends: {{mail1: {{address: {BACKEND}}}}}}}
"""

# The backend: accepts and holds every connection (never answers, never closes).
BACKEND_PY = f"""
import socket
s = socket.create_server(("{BACKEND}", 143)); held = []
while True: held.append(s.accept()[0])
"""

# The client: opens HELD connections, says "ready", closes them all when stdin gives a line,
# then prints the wall-clock time of the close.
CLIENT_PY = textwrap.dedent(f"""
    import socket, sys, time
    conns = [socket.create_connection(("{VIP}", 143), timeout=5) for _ in range({HELD})]
    print("ready", flush=True)
    sys.stdin.readline()
    closed = time.time()
    for c in conns: c.close()
    print(closed, flush=True)
""")

# The drain's wait as the node's minion runs it; prints its result and when it returned.
WAIT_PY = textwrap.dedent("""
    import json, sys, time
    from anycastlb import minion
    model = json.load(open(sys.argv[1]))
    ret = minion.wait_sessions(model, deadline=float(sys.argv[2]), every=0.1)
    print(json.dumps({**ret, "returned": time.time()}))
""")


class Node(NetnsNode):
    """A HAProxy node with a backend behind its VIP, and its model as the minion reads it."""

    def __init__(self) -> None:
        super().__init__("dr", CATALOG)
        (self.base / "model.json").write_text(json.dumps(self.model))

    def up(self) -> None:
        self.namespace(VIP, BACKEND)
        self.spawn([sys.executable, "-c", BACKEND_PY], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        res = apply_daemon("haproxy", self.model, {"certificates": {}, "bgp_passwords": {}},
                           root=self.root, control=self.ctl)
        assert res.result is True, res.comment

    def master(self, command: str) -> str:
        return unix_query(self.ctl.path(self.ctl.paths.haproxy_master_socket), command)

    def wait_sessions(self, deadline: float) -> subprocess.Popen[str]:
        """The minion's wait, in a mount namespace where ``/run`` is this node's (as in the lab's nodes)."""
        script = f'mount --bind "$1" /run && exec "$2" -c "$3" "$4" "$5"'
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(Path(self.root, "run")), sys.executable, WAIT_PY, str(self.base / "model.json"), str(deadline)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def node() -> Iterator[Node]:
    with Node() as n:
        yield n


def result(p: subprocess.Popen[str]) -> dict:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return json.loads(out)


def test_the_drain_waits_for_the_connections_an_old_worker_holds_after_a_reload(node: Node) -> None:
    from anycastlb.answers.haproxy import frontend_sessions, parse_show_stat

    client = node.spawn([sys.executable, "-c", CLIENT_PY], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline().strip() == "ready"
    # "ready" means the kernel accepted them; the reload must come after the worker took them off
    # the listening socket, or the new worker accepts them (a fast reload won that race in a run)
    admin_sock = node.ctl.path("/run/haproxy/admin.sock")

    def sessions() -> int:
        rows = parse_show_stat(unix_query(admin_sock, "show stat -1 1 -1"), ("scur",))
        return frontend_sessions(rows, ["imap-143"])["imap-143"]

    held = poll_until(sessions, lambda n: n == HELD, timeout=10)
    assert held.done, f"the worker holds {held.value} of the client's {HELD} connections"
    before = parse_show_proc(node.master("show proc"))
    node.ctl.reload_or_start("haproxy")
    proc = parse_show_proc(node.master("show proc"))
    assert [p for p, _ in before.workers] == list(proc.old_workers)   # the old worker still holds them
    assert sessions() == 0   # the new worker has none: all the stats socket sees

    short = result(node.wait_sessions(1))
    assert (short["result"], short["open"], short["old_workers"]) == (False, HELD, HELD), short
    assert short["comment"].endswith(f"imap-143 {HELD} ({HELD} in old HAProxy workers of a reload)"), short

    waiting = node.wait_sessions(30)
    time.sleep(2)
    assert waiting.poll() is None, waiting.communicate()   # still waiting for the old worker's sessions
    client.stdin.write("close\n")
    client.stdin.flush()
    closed = float(client.stdout.readline())
    long = result(waiting)
    assert (long["result"], long["open"]) == (True, 0), long
    assert long["returned"] > closed, (long, closed)
