"""The campus fleet on systemd: every node boots systemd as PID 1 (``lab up --init systemd``).

ONE lab for the module. The campus tests run again against it (traffic through every VIP,
the drained node and backend, the firewall seen from the client, HAProxy backend states,
Icinga all OK, a catalog change applied under load with 0 failed requests: validation,
then the reload), then what only a systemd host has: Debian's units and ours
enabled by the Salt states, HAProxy killed by ``systemctl kill`` and brought back by
systemd's Restart=, a node rebooted. Timings are measured by benchmarks/systemd.py, not here.
"""

from __future__ import annotations

import time

import pytest

# The campus tests, collected again against this lab, in the campus module's order.
from test_lab_campus import fleet, status  # noqa: F401  (fixtures)
from test_lab_campus import test_lab_up_within_budget  # noqa: F401
from test_lab_campus import test_every_service_answers_through_its_vip  # noqa: F401
from test_lab_campus import test_drained_lb3_announces_nothing_but_keeps_its_sessions  # noqa: F401
from test_lab_campus import test_drained_backend_web2_gets_no_new_sessions  # noqa: F401
from test_lab_campus import test_client_reaches_no_port_the_catalog_does_not_open  # noqa: F401
from test_lab_campus import test_haproxy_backend_states  # noqa: F401
from test_lab_campus import test_icinga2_reports_every_check_ok  # noqa: F401
from test_lab_campus import test_catalog_change_reaches_the_client_without_a_failed_request  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.lab]

WWW = "192.0.2.10/32"


@pytest.fixture(scope="module")
def lab(campus_lab_factory):
    from pathlib import Path
    with campus_lab_factory("sysd", init="systemd") as the_lab:
        print(the_lab.up_output)
        prefix, statedir = the_lab.prefix, the_lab.statedir
        yield the_lab
    # `lab down` leaves nothing behind: no cgroup, no nspawn runtime entry, no mount, no state dir
    left = [str(p) for c in ("systemd", "unified", "memory") for p in Path(f"/sys/fs/cgroup/{c}").glob(f"{prefix}-*")]
    left += [str(p) for p in Path("/run/systemd/nspawn").rglob(f"*{prefix}*")] if Path("/run/systemd/nspawn").exists() else []
    left += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(statedir) in line]
    assert not left and not statedir.exists(), left


def show(lab, node: str, unit: str, *props: str) -> dict[str, str]:
    out = lab.exec(node, ["systemctl", "show", unit, *(f"-p{p}" for p in props)], check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_every_node_booted_systemd_and_runs_the_fleet_from_enabled_units(lab):
    from anycastlb.lab import machine
    for node in lab.nodes:
        assert machine.system_state(lab, node) == "running", (node, machine.failed_units(lab, node))
        assert lab.exec(node, ["systemctl", "is-active", "salt-minion"]).stdout.strip() == "active"
    assert lab.exec("salt", ["systemctl", "is-active", "salt-master"]).stdout.strip() == "active"
    wanted = {"lb1": ["nftables", "haproxy", "anycastlb-healthd", "bird"], "rr1": ["nftables", "bird"],
              "web1": ["nftables", "apache2"], "mon1": ["nftables", "bird", "icinga2"],
              "kdc1": ["nftables", "anycastlb-healthd", "bird"]}
    for node, units in wanted.items():
        enabled = lab.exec(node, ["systemctl", "is-enabled", *units]).stdout.split()
        assert enabled == ["enabled"] * len(units), (node, units, enabled)
        for unit in units[1:]:  # nftables is a oneshot that runs at boot; Salt loads the table itself
            assert lab.exec(node, ["systemctl", "is-active", unit]).stdout.strip() == "active", (node, unit)
    assert lab.exec("lb1", ["systemctl", "is-enabled", "apache2"]).stdout.strip() != "enabled"
    # HAProxy is Debian's unit: its MainPID is the master whose pid /run/haproxy.pid holds, the file healthd watches.
    main = show(lab, "lb1", "haproxy", "MainPID", "FragmentPath")
    assert main["FragmentPath"] == "/lib/systemd/system/haproxy.service"
    assert lab.read_file("lb1", "/run/haproxy.pid").split()[0] == main["MainPID"]
    assert '"pidfile": "/run/haproxy.pid"' in lab.read_file("lb1", "/etc/anycastlb/healthd.json")
    healthd = show(lab, "lb1", "anycastlb-healthd", "FragmentPath", "ExecMainPID")
    assert healthd["FragmentPath"] == "/etc/systemd/system/anycastlb-healthd.service"
    assert "anycastlb.healthd" in lab.read_file("lb1", f"/proc/{healthd['ExecMainPID']}/cmdline")


def test_systemctl_kill_haproxy_withdraws_and_systemds_restart_announces_again(lab):
    from anycastlb.lab import faults
    lb1 = lab.host("lb1").address
    before = show(lab, "lb1", "haproxy", "MainPID", "NRestarts")
    with faults.BirdSocket(lab, "rr1") as rr:
        assert rr.carries(WWW, lb1)
        lab.exec("lb1", ["systemctl", "kill", "-s", "KILL", "haproxy"], check=True)
        faults.wait_until(lambda: not rr.carries(WWW, lb1), 10, "rr1 still carries lb1's www path", every=0.002)
        faults.wait_until(lambda: rr.carries(WWW, lb1), 30, "lb1 never announced www again", every=0.05)
    after = show(lab, "lb1", "haproxy", "MainPID", "NRestarts")
    assert after["MainPID"] != before["MainPID"] and int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    log = lab.exec("lb1", ["journalctl", "-u", "anycastlb-healthd", "--no-pager", "-o", "cat"]).stdout
    assert f"haproxy (pid {before['MainPID']}) exited" in log
    assert f"watching haproxy pid {after['MainPID']} (/run/haproxy.pid)" in log


def test_a_rebooted_node_comes_back_by_itself_and_the_vips_lose_no_request(lab):
    """lb1 reboots under load on www and imap: lb2 serves meanwhile; lb1 comes back with its units,
    its firewall loaded before HAProxy started, its VIPs on lo, and announces again."""
    from anycastlb.lab import faults, machine, outage
    lb1 = lab.host("lb1").address
    cafile = str(lab.statedir / "pki" / "campus-wildcard.crt")
    targets = [{"kind": "https", "address": "192.0.2.10", "port": 443, "host": "www.example.org",
                "path": "/healthz", "cafile": cafile},
               {"kind": "tcp", "address": "192.0.2.20", "port": 143}]
    probers = [outage.Prober(lab, "client", t, interval=0.05, timeout=1.0, duration=180).start() for t in targets]
    try:
        time.sleep(1)
        old = machine.leader(lab, "lb1")
        machine.reboot(lab, "lb1")
        faults.wait_until(lambda: machine.leader(lab, "lb1") not in (None, old), 120, "lb1 did not boot again",
                          every=0.1)
        faults.wait_until(lambda: machine.system_state(lab, "lb1") in ("running", "degraded"), 60,
                          "lb1's systemd did not finish booting")
        with faults.BirdSocket(lab, "rr1") as rr:
            faults.wait_until(lambda: rr.carries(WWW, lb1), 60, "lb1 does not announce www after its reboot")
        time.sleep(2)
    finally:
        timelines = [p.stop() for p in probers]
    assert machine.system_state(lab, "lb1") == "running", machine.failed_units(lab, "lb1")
    for t, timeline in zip(targets, timelines):
        assert len(timeline) > 100
        assert outage.failures(timeline) == [], (t["address"], t["port"], outage.failures(timeline)[:5])
    lo = lab.exec("lb1", ["ip", "-br", "addr", "show", "dev", "lo"]).stdout
    assert "192.0.2.10/32" in lo and "2001:db8:1::10/128" in lo
    assert "table inet anycastlb" in lab.exec("lb1", ["nft", "list", "tables"]).stdout
    fw = int(show(lab, "lb1", "nftables", "ExecMainExitTimestampMonotonic")["ExecMainExitTimestampMonotonic"])
    hap = int(show(lab, "lb1", "haproxy", "ExecMainStartTimestampMonotonic")["ExecMainStartTimestampMonotonic"])
    assert 0 < fw < hap, "the firewall must be loaded before HAProxy listens"
    # announced only once healthy: healthd's first verdict is "checking" (withdrawn), then announced
    log = lab.exec("lb1", ["journalctl", "-b", "-u", "anycastlb-healthd", "--no-pager", "-o", "cat"]).stdout
    assert log.index("192.0.2.10/32 (www): withdrawn: checking") < log.index("192.0.2.10/32 (www): announced")


def test_check_unit_withdraws_an_anycast_service_the_moment_its_process_dies(lab):
    """The KDC of kdc1 as a unit, ``check.unit`` in the catalog: SIGKILL withdraws through the unit's
    MainPID (pidfd), not at the next 2 s tcp check; when the unit runs again, the VIP comes back."""
    import json
    from pathlib import Path
    from anycastlb.lab import faults
    from anycastlb.lab import fleet as fl
    kdc1 = lab.host("kdc1").address
    argv = lab.registry.get("kdc1", "responder")["argv"]
    lab.stop("kdc1", "responder")

    def run_unit() -> None:
        lab.exec("kdc1", ["systemd-run", "--unit=aclb-kdc", "--", *argv], check=True)

    run_unit()
    faults.wait_until(lambda: lab.exec("kdc1", ["systemctl", "is-active", "aclb-kdc"]).stdout.strip() == "active"
                      and lab.exec("kdc1", ["ss", "-Hltn", "sport = :88"]).stdout.strip(), 20,
                      "the KDC unit does not listen")
    text = Path(lab.catalog).read_text()
    assert "    check: {tcp: {port: 88}}" in text
    Path(lab.catalog).write_text(text.replace("    check: {tcp: {port: 88}}",
                                              "    check: {tcp: {port: 88}, unit: aclb-kdc.service}", 1))
    fl.apply(lab, "kdc1")
    doc = json.loads(lab.read_file("kdc1", "/etc/anycastlb/healthd.json"))
    assert {a["watch"].get("unit") for a in doc["announcements"]} == {"aclb-kdc.service"}
    main = show(lab, "kdc1", "aclb-kdc", "MainPID")["MainPID"]

    def journal() -> str:
        return lab.exec("kdc1", ["journalctl", "-u", "anycastlb-healthd", "--no-pager", "-o", "cat"]).stdout

    faults.wait_until(lambda: f"watching aclb-kdc.service main pid {main}" in journal(), 30,
                      "healthd does not watch the KDC unit")
    with faults.BirdSocket(lab, "rr1") as rr:
        faults.wait_until(lambda: rr.carries("192.0.2.88/32", kdc1), 30, "kdc1 does not announce the KDC VIP")
        lab.exec("kdc1", ["systemctl", "kill", "-s", "KILL", "aclb-kdc"], check=True)
        faults.wait_until(lambda: not rr.carries("192.0.2.88/32", kdc1), 10, "kdc1 still announces", every=0.002)
        # the pidfd's verdict, not the tcp check's ("connection refused" would come at the next 2 s check)
        faults.wait_until(lambda: f"192.0.2.88/32 (kdc): withdrawn: aclb-kdc.service (pid {main}) exited"
                          in journal(), 5, "healthd did not withdraw on the unit's exit")
        reasons = [line for line in journal().splitlines() if "192.0.2.88/32 (kdc): withdrawn" in line]
        assert reasons[-1].endswith(f"withdrawn: aclb-kdc.service (pid {main}) exited"), reasons
        lab.exec("kdc1", ["systemctl", "reset-failed", "aclb-kdc"])
        run_unit()
        faults.wait_until(lambda: rr.carries("192.0.2.88/32", kdc1), 30, "kdc1 never announced the KDC again")
