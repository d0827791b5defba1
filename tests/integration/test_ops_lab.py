"""Operating the fleet in the lab: runtime drain, a refused catalog, a rolling deploy from a git push
under client load, salt-ssh bootstrap of a node without a minion. One lab for the module."""
from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

CATALOG = Path(__file__).resolve().parents[2] / "anycastlb" / "examples" / "campus.yaml"
PROBE = r'''
import http.client, json, os, socket, sys, time
vip, port, stop, limit, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
ok = bad = 0
errors = []
t0 = time.monotonic()
while ok + bad < limit and time.monotonic() - t0 < seconds and not os.path.exists(stop):
    try:
        c = http.client.HTTPConnection(vip, port, timeout=1.0)
        c.request("GET", "/", headers={"Host": "www.example.org", "Connection": "close"})
        status = c.getresponse().status
        c.close()
        if status == 301:
            ok += 1
        else:
            bad += 1; errors.append(f"{time.monotonic() - t0:.2f}s status {status}")
    except OSError as exc:
        bad += 1; errors.append(f"{time.monotonic() - t0:.2f}s {type(exc).__name__}: {exc}")
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": bad, "errors": errors[:20], "seconds": round(time.monotonic() - t0, 1)}))
'''


@pytest.fixture(scope="module")
def lab():
    from anycastlb.lab.cli import lab_up

    if os.environ.get("ANYCASTLB_OPS_LAB"):  # development: reuse a running lab of that prefix (kept up)
        from anycastlb.lab import load_lab
        yield load_lab(os.environ["ANYCASTLB_OPS_LAB"])
        return
    prefix = "aclbop" + secrets.token_hex(2)
    out = io.StringIO()
    t0 = time.monotonic()
    try:
        lab = lab_up(CATALOG, prefix=prefix, out=out)
    except Exception:
        print(out.getvalue())
        raise
    print(f"\nlab {prefix} up in {time.monotonic() - t0:.1f} s")
    try:
        from anycastlb.lab import ops
        # the first highstate's nftables drops the minions' open connections (see ops.restart_minions)
        print(f"minions restarted, answering after {ops.restart_minions(lab)} s")
        yield lab
    finally:
        lab.down()
        assert not any(n.startswith(prefix + "-") for n in os.listdir("/run/netns"))


def run(lab, *args, timeout=300):
    from anycastlb.lab import ops
    return ops.salt_run(lab, *args, timeout=timeout)


def rr_view(lab):
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab import fleet as fl
    fleet = compile_catalog(lab.catalog)
    return {rr: fl.announcers(lab, fleet, rr) for rr in ("rr1", "rr2")}


def test_runtime_drain_withdraws_and_keeps_bgp_established(lab):
    t0 = time.monotonic()
    rc, ret, raw = run(lab, "anycastlb.drain", "node=lb1")
    took = time.monotonic() - t0
    assert rc == 0 and ret["result"] is True, raw
    assert ret["sessions"]["rr1"] and all(s == "Established" for rr in ret["sessions"].values() for s in rr.values())
    for rr, view in rr_view(lab).items():
        assert all("lb1" not in nodes for nodes in view.values()), (rr, view)
        assert any("lb2" in nodes for nodes in view.values()), "the other node keeps announcing"
    print(f"\nruntime drain of lb1 (salt-run, incl. Salt round trips): {took:.1f} s; node-side "
          f"{ret['node_drain'].get('waited_ms')} ms; RR wait {ret['withdrawn_ms']} ms")
    rc, ret, raw = run(lab, "anycastlb.undrain", "node=lb1")
    assert rc == 0 and ret["result"] is True, raw
    assert len(ret["expected"]) == 4
    assert all("lb1" in rr_view(lab)["rr1"][p] for p in ret["expected"])


def test_refused_catalog_stops_at_lint_and_changes_nothing(lab):
    from anycastlb.lab import faults, ops

    cat = ops.catalog_file(lab)
    good = cat.read_text()
    before = {n: faults.node_snapshot(lab, n) for n in ("lb1", "rr1", "web1")}
    try:
        cat.write_text(good.replace("cluster: edge\n    backends: [web1, web2]", "cluster: nosuch\n    backends: [web1, web2]"))
        rc, data, raw = ops.orchestrate(lab)
        assert rc != 0, raw
        # The orchestration's own pillar comes from the same ext_pillar: it is refused before
        # any state (or at the lint state), with the lint message naming file, line and key.
        assert "campus.yaml:" in raw and "cluster 'nosuch' does not exist" in raw, raw
        assert "salt.state" not in raw and "apply lb1" not in raw, "no node was applied"
    finally:
        cat.write_text(good)
    after = {n: faults.node_snapshot(lab, n) for n in ("lb1", "rr1", "web1")}
    assert after == before, "a refused catalog touches no file on any node"


def test_git_push_rolls_the_change_out_with_no_failed_request(lab):
    from anycastlb.lab import ops
    from anycastlb.lab.fleet import PYTHON

    weight = {}

    def edit(checkout: Path) -> None:
        p = checkout / "campus.yaml"
        data = yaml.safe_load(p.read_text())
        old = data["services"]["intranet"]["backends"]["web1"]["weight"]
        weight["new"] = 81 if old == 80 else 80  # (a reused development lab may have 80 already)
        data["services"]["intranet"]["backends"]["web1"]["weight"] = weight["new"]
        data["services"]["imap-alt"] = {"mode": "tcp", "vip": "192.0.2.21", "cluster": "edge", "ports": [1143],
                                        "backend_port": 143, "check": {"tcp": {}},
                                        "backends": {"mail1": {"address": "203.0.113.25"}}}
        p.write_text(yaml.safe_dump(data, sort_keys=False))

    stop = lab.statedir / "stop-probe"
    stop.unlink(missing_ok=True)
    script = lab.statedir / "probe-loop.py"
    script.write_text(PROBE)
    events = ops.OrchestrationWatch(lab)
    probe = subprocess.Popen(lab.argv("client", [PYTHON, str(script), "192.0.2.10", "80", str(stop), "6000", "300"]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        t0 = time.monotonic()
        rev = ops.push_catalog(lab, edit, "intranet: web1 weight 80; new service imap-alt")
        ret = events.wait(400)
        rollout = time.monotonic() - t0
    finally:
        stop.touch()
        out, err = probe.communicate(timeout=30)
        events.close()
    load = json.loads(out)
    assert ret.get("success") is True, json.dumps(ret.get("return"))[:4000]
    assert load["ok"] > 100 and load["failed"] == 0, load
    steps = ops.orchestration_steps(ret)
    # a weight and a new service leave every BGP session alone: applied in place, nothing drained
    assert {"apply lb1", "announced lb1", "announced lb2", "mark deployed"} <= set(steps), steps
    assert not {"drain lb1", "drain lb2", "undrain lb1"} & set(steps), steps
    head = subprocess.run(["git", "-C", str(lab.statedir / "catalog-repo"), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert head == rev
    cfg = lab.read_file("lb2", "/etc/haproxy/haproxy.cfg")
    assert "imap-alt" in cfg and f"weight {weight['new']}" in cfg
    r = lab.exec("client", [PYTHON, "-c", "import socket; s=socket.create_connection(('192.0.2.21', 1143), 2); "
                                          "print(s.recv(100).decode())"], timeout=10)
    assert r.returncode == 0 and "143" in r.stdout, r.stderr
    print(f"\nrollout from git push to orchestration done: {rollout:.1f} s for {len(lab.nodes)} nodes; "
          f"client load: {load['ok']} ok, {load['failed']} failed in {load['seconds']} s")


def test_salt_ssh_bootstraps_a_node_without_minion(lab):
    from anycastlb.lab import fleet as fl
    from anycastlb.lab import ops
    from anycastlb.lab.salt import ping

    ops.forget_minion(lab, "web2")
    assert "web2" not in ping(lab)
    ops.start_sshd(lab, "web2")
    t0 = time.monotonic()
    res = ops.bootstrap(lab, "web2")
    took = time.monotonic() - t0
    assert "web2" in ping(lab)
    conf = yaml.safe_load(lab.read_file("web2", "/etc/salt/minion.d/anycastlb.conf"))
    assert conf["id"] == "web2" and conf["master"] == lab.host("salt").address
    summary = fl.apply(lab, "web2")
    assert summary["web2"]["failed"] == 0
    print(f"\nsalt-ssh bootstrap of web2: salt-ssh {res['salt_ssh_seconds']} s, answering test.ping after {took:.1f} s")
