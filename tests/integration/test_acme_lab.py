"""ACME across the fleet, in the lab: the lab's CA (Pebble), real Salt, the rolling deploy, Icinga2.

tests/data/acme-fleet.yaml: the salt-master is the issuer, ``www`` runs on lb1 and lb2
(cluster ``edge``) with a certificate from the secrets store, ``intra`` on lb3 (another
cluster), mon1 monitors. ``lab up`` wires Pebble because the catalog has an ``acme`` section.

What a user would see:
- a pushed catalog change switches ``www`` to ACME: the reactor's rolling deploy binds a
  placeholder, then issues from the lab CA and hot-loads it; lb1 and lb2 serve the same
  certificate (read on each node, as the monitoring's serial check reads it) and clients
  verify it with the CA's root; lb3 and every other node never see the key;
- a forced renewal under client load changes the serial on both nodes, fails no request,
  and reloads no HAProxy (worker PIDs and reload count unchanged);
- the issuer's Salt schedule runs the same renewal pass (its report reaches the monitoring node);
- a renewal the CA refuses keeps the old certificate on both nodes, and Icinga2's
  ``acme www renewal`` check turns WARNING with the reason, while the certificate and serial
  checks stay OK.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_acme_pebble import CLIENT  # noqa: E402 (the TLS load client verifying SNI, recording serials)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]
pytest.importorskip("acme", reason="needs certbot's acme package (pip install '.[acme]')")

FLEET = Path(__file__).resolve().parents[1] / "data" / "acme-fleet.yaml"
NAME, VIP = "www.example.org", "192.0.2.10"
LBS = {"lb1": "198.51.100.21", "lb2": "198.51.100.22"}
SERIALS = ("import json, sys; from anycastlb.plugins.check_anycastlb_acme import fetch_serial; "
           "print(json.dumps({n: fetch_serial(n, a, 8403, sys.argv[1], 3).serial "
           "for n, a in (x.split('=') for x in sys.argv[2:])}))")


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    from anycastlb.lab.cli import temporary_lab

    with temporary_lab(FLEET, tag="acm") as the_lab:
        yield the_lab


def served(lab: Any) -> dict[str, str | None]:
    """The serial each LB node of www serves on its own address, read from the monitoring node."""
    from anycastlb.lab.fleet import PYTHON
    r = lab.exec("mon1", [PYTHON, "-c", SERIALS, NAME, *(f"{n}={a}" for n, a in LBS.items())], timeout=30,
                 cwd=str(lab.repo))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def stored(lab: Any) -> tuple[str, str]:
    """(serial, key) of the issuer's acme-www bundle."""
    from anycastlb.certs import cert_info, split_bundle
    bundle = lab.node_path("salt", "/etc/anycastlb/acme/acme-www.pem").read_text()
    return cert_info(bundle).serial, split_bundle(bundle)[1][0]


def workers(lab: Any, node: str) -> tuple[int, list[int]]:
    """(reload count, worker PIDs) from the node's HAProxy master CLI."""
    from anycastlb.service import parse_show_proc
    r = lab.exec(node, ["sh", "-c", "echo 'show proc' | socat stdio UNIX-CONNECT:/run/haproxy/master.sock"],
                 timeout=10)
    info = parse_show_proc(r.stdout)
    return info.reloads, sorted(p for p, _ in info.workers)


def client(lab: Any, seconds: float) -> subprocess.Popen[str]:
    from anycastlb.lab import acme_ca
    from anycastlb.lab.fleet import PYTHON
    return subprocess.Popen(lab.argv("client", [PYTHON, "-c", CLIENT, str(seconds), str(acme_ca.trust(lab)), VIP,
                                                NAME, "/healthz"]), stdout=subprocess.PIPE, text=True)


def renew(lab: Any, *args: str) -> tuple[int, Any]:
    from anycastlb.lab.ops import salt_run
    rc, ret, raw = salt_run(lab, "anycastlb.renew", *args, timeout=300)
    assert isinstance(ret, dict), raw[-2000:]
    return rc, ret


def failed_states(lab: Any, ret: dict[str, Any]) -> str:
    """The orchestration's failed states with their comments, and the end of the master's log."""
    data = (ret.get("return") or {}).get("data") or {}
    states = next(iter(data.values()), {}) if isinstance(data, dict) else {}
    bad = {k.split("_|-")[1]: json.dumps(v.get("changes") or v.get("comment"))[-1500:]
           for k, v in (states.items() if isinstance(states, dict) else []) if v.get("result") is False}
    log = lab.exec("salt", ["tail", "-c", "3000", "/var/log/salt/master"]).stdout
    return f"failed states: {json.dumps(bad, indent=1)}\nmaster log: {log}"


@pytest.fixture(scope="module")
def switched(lab: Any) -> Any:
    """www switched to ACME by a pushed catalog change; the time until both nodes serve the CA's certificate."""
    from anycastlb.lab import ops
    from anycastlb.poll import poll_until

    def edit(checkout: Path) -> None:
        p = checkout / FLEET.name
        p.write_text(p.read_text().replace("tls: {certificate: www-cert}", "tls: {acme: true}"))

    events = ops.OrchestrationWatch(lab)
    try:
        t0 = time.monotonic()
        ops.push_catalog(lab, edit, "www: a certificate from the fleet's ACME CA")

        def done() -> dict[str, str | None]:
            """Both nodes serve what the issuer's first pass issued (not the placeholder before it)."""
            path = lab.node_path("salt", "/etc/anycastlb/acme/state.json")
            issued = [o for o in (json.loads(path.read_text())["outcomes"] if path.exists() else [])
                      if o["name"] == "acme-www" and o["result"] == "issued"]
            now = served(lab)
            return now if issued and set(now.values()) == {issued[0]["serial"]} else {}
        polled = poll_until(done, bool, 300, 0.5, since=t0)
        ret = events.wait(300)
    finally:
        events.close()
    assert ret.get("success") is True, failed_states(lab, ret)
    assert polled.done, f"lb1 and lb2 serve {served(lab)}, the issuer stored {stored(lab)[0]}"
    lab.switch_s = polled.waited
    lab.steps = ops.orchestration_steps(ret)
    return lab


def test_a_service_switched_to_acme_is_served_the_cas_certificate_by_every_lb_node(switched: Any) -> None:
    lab = switched
    serial, _ = stored(lab)
    assert served(lab) == {"lb1": serial, "lb2": serial}
    assert "acme renew" in lab.steps, lab.steps
    load = json.loads(client(lab, 0).communicate(timeout=30)[0])   # verified with the lab CA's root, SNI
    assert load["failures"] == 0 and load["serials"] == [serial], load
    report = json.loads(lab.node_path("mon1", "/var/log/anycastlb/acme-renewal.json").read_text())
    assert report["certificates"]["acme-www"]["serial"] == serial
    print(f"\npushed catalog change to the CA's certificate served on lb1 and lb2: {lab.switch_s:.1f} s")


def test_nodes_outside_the_cluster_never_see_the_key(switched: Any) -> None:
    from anycastlb.lab.salt import salt_cmd
    lab = switched
    _, key = stored(lab)
    rc, out, err = salt_cmd(lab, "*", "pillar.items", "unmask=True", "--out=json", "--static", timeout=120)
    pillars = json.loads(out)
    assert sorted(pillars) == sorted(lab.nodes), err
    body = key.split("-----")[2].strip().splitlines()[1]   # a line of the key's base64
    holders = sorted(n for n, p in pillars.items() if body in json.dumps(p))
    assert holders == ["lb1", "lb2"]
    for node in sorted(set(lab.nodes) - {"lb1", "lb2"}):
        assert lab.exec(node, ["test", "-e", "/etc/haproxy/certs/anycastlb-acme-www.pem"]).returncode == 1, node
    pem = lab.node_path("lb1", "/etc/haproxy/certs/anycastlb-acme-www.pem")
    assert oct(pem.stat().st_mode & 0o777) == "0o600" and body in pem.read_text()


def test_a_forced_renewal_under_load_changes_every_nodes_serial_without_reload_or_failure(switched: Any) -> None:
    lab = switched
    old, _ = stored(lab)
    procs = {n: workers(lab, n) for n in LBS}
    load = client(lab, 15.0)
    time.sleep(1.0)
    rc, ret = renew(lab, "service=www", "force=True")
    doc = json.loads(load.communicate(timeout=60)[0])
    new, _ = stored(lab)
    assert rc == 0 and [o["result"] for o in ret["outcomes"]] == ["issued"], ret
    assert new != old and served(lab) == {"lb1": new, "lb2": new}
    assert {n: workers(lab, n) for n in LBS} == procs          # no reload: same workers, same count
    assert sorted(ret["applied"]) == ["lb1", "lb2"]
    assert all("runtime API, no reload" in c for c in ret["applied"].values()), ret["applied"]
    assert doc["failures"] == 0 and doc["requests"] > 100, doc
    assert doc["serials"][0] == old and doc["serials"][-1] == new, doc
    print(f"\nforced renewal under load: {doc['requests']} requests, {doc['failures']} failed; "
          f"HAProxy workers and reload count kept: {procs}")


def test_the_issuers_schedule_runs_the_renewal_pass(switched: Any) -> None:
    from anycastlb.lab.salt import salt_cmd
    from anycastlb.poll import poll_until
    lab = switched
    report = lab.node_path("mon1", "/var/log/anycastlb/acme-renewal.json")
    before = json.loads(report.read_text())["at"]
    time.sleep(1.1)   # the report's clock has seconds
    rc, out, err = salt_cmd(lab, "salt", "schedule.run_job", "anycastlb-acme-renew", "--out=json", timeout=60)
    assert rc == 0, out + err
    polled = poll_until(lambda: json.loads(report.read_text()), lambda r: r["at"] != before, 120, 0.5)
    assert polled.done, "the scheduled pass did not report"
    assert polled.value["certificates"]["acme-www"]["result"] == "kept"   # not due: nothing to do


def test_a_renewal_the_ca_refuses_keeps_the_certificate_and_turns_the_check_warning(switched: Any) -> None:
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab import acme_ca
    from anycastlb.lab.fleet import _icinga_command, icinga_states
    from anycastlb.poll import poll_until
    lab = switched
    old, _ = stored(lab)
    acme_ca.stop_dns(lab)            # Pebble can no longer resolve the names: it refuses the authorizations
    try:
        rc, ret = renew(lab, "service=www", "force=True")
    finally:
        acme_ca.start_dns(lab)
    assert ret["result"] is False, ret
    assert ret["outcomes"][0]["result"] == "failed" and "the old certificate stays" in ret["outcomes"][0]["reason"]
    assert stored(lab)[0] == old and served(lab) == {"lb1": old, "lb2": old}
    fleet = compile_catalog(lab.catalog)
    checks = ["acme www renewal", "acme www serial", f"acme www {NAME} {VIP} certificate"]
    now = int(time.time())
    _icinga_command(lab, "mon1", [f"[{now}] SCHEDULE_FORCED_SVC_CHECK;vip-www;{c};{now}\n" for c in checks])
    polled = poll_until(lambda: icinga_states(lab, fleet) or {},
                        lambda st: st.get("vip-www!acme www renewal", {}).get("state") == "WARNING", 60, 1.0)
    states = {c: polled.value.get(f"vip-www!{c}") for c in checks}
    assert polled.done, states
    assert "the old certificate stays" in states["acme www renewal"]["output"], states
    assert states["acme www serial"]["state"] == "OK" and old in states["acme www serial"]["output"], states
    assert states[f"acme www {NAME} {VIP} certificate"]["state"] == "OK", states
