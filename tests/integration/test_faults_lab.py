"""Faults in the campus lab while a client keeps asking: each test breaks one thing, prints the
outage the client saw, checks that the client is answered again, then repairs the fault and
waits until the route reflectors carry every expected path before the next test.

The client is :mod:`anycastlb.lab.outage`: a new request every 20 ms (50 ms for https),
each with its own timeout, from the lab's client namespace to documentation addresses,
bounded in time. Faults are real: ``ip link set eth0 down``, SIGKILL of the daemon's
process tree, a certificate HAProxy's checker rejects, a bad catalog pushed through git,
the reactor and the rolling orchestration. One lab for the module.
"""

from __future__ import annotations

import contextlib
import time
import types
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.lab]

WWW = {"kind": "http", "address": "192.0.2.10", "port": 80, "host": "www.example.org", "expect": "301"}
LB1 = "198.51.100.21"


@pytest.fixture(scope="module")
def lab(campus_lab_factory):
    with campus_lab_factory("faults", restart_minions=True) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def fleet(lab):
    from anycastlb.compiler import compile_catalog
    return compile_catalog(lab.catalog)


@pytest.fixture
def converged(lab, fleet):
    """Every test starts, and leaves, a fleet whose route reflectors carry every expected path."""
    from anycastlb.lab import fleet as fl
    fl.wait_converged(lab, fleet, timeout=120)
    yield
    fl.wait_converged(lab, fleet, timeout=180)


@contextlib.contextmanager
def probing(lab, repair=lambda: None, target=WWW, interval=0.02, timeout=0.2, duration=120.0, settle=1.0):
    """The client probes ``target`` while the block breaks something, after ``settle`` s of normal
    service; afterwards ``run.timeline`` holds every request and ``run.t0`` when the block began.
    ``repair`` runs however the block ends."""
    from anycastlb.lab.outage import Prober

    run = types.SimpleNamespace(t0=0.0, timeline=[])
    p = Prober(lab, "client", dict(target), interval=interval, timeout=timeout, duration=duration).start()
    try:
        time.sleep(settle)
        run.t0 = time.monotonic()
        yield run
    finally:
        try:
            run.timeline = p.stop()
        finally:
            repair()


def report(what: str, timeline, since: float, interval: float = 0.02) -> float:
    from anycastlb.lab.outage import failures, outage
    ms = outage(timeline, since=since, interval=interval)
    bad = failures(timeline, since=since)
    kinds = sorted({s[3].split(":")[0] for s in bad})
    print(f"\n{what}: outage {ms:.0f} ms, {len(bad)} of {len(timeline)} requests failed {kinds}")
    return ms


def answered_after(timeline, seconds: float = 1.0) -> bool:
    """The client's last ``seconds`` of requests all succeeded (it is served again)."""
    end = timeline[-1][0]
    tail = [s for s in timeline if s[0] >= end - seconds]
    return bool(tail) and all(s[1] for s in tail)


def test_lb_node_link_down(lab, converged):
    """lb1's only link goes down: BFD on the route reflectors withdraws its paths."""
    from anycastlb.lab import faults

    with faults.BirdSocket(lab, "rr1") as rr1, probing(lab, lambda: faults.link_up(lab, "lb1")) as run:
        down_at = time.monotonic()
        faults.link_down(lab, "lb1")
        withdrawn = faults.wait_until(lambda: not rr1.carries("192.0.2.10/32", LB1), 15,
                                      "rr1 still carries lb1's path for www", every=0.002, since=down_at)
        time.sleep(1.5)
    ms = report("lb1 link down", run.timeline, run.t0)
    print(f"rr1 withdrew lb1's path {withdrawn * 1000:.0f} ms after the link went down")
    assert withdrawn < 1.5, "BFD (100 ms x 3) must notice long before the hold timer"
    assert ms < 1500
    assert answered_after(run.timeline)


@pytest.mark.parametrize("node,daemon", [("lb1", "haproxy"), ("lb1", "bird"), ("rr1", "bird")])
def test_daemon_dies(lab, converged, node, daemon):
    """A daemon is SIGKILLed: its node's paths go (HAProxy: healthd; BIRD: the session closes)."""
    from anycastlb.lab import faults

    before = faults.daemon_pid(lab, node, daemon)
    assert before
    with probing(lab, lambda: faults.control(lab, node, "start", daemon)) as run:
        with faults.BirdSocket(lab, "rr2") as rr2:
            killed = faults.kill_daemon(lab, node, daemon, wait=False)
            if node == "lb1":  # timed from the kill syscall, watched while the tree dies
                gone = faults.wait_until(lambda: not rr2.carries("192.0.2.10/32", LB1), 15,
                                         f"rr2 still carries lb1's path after {daemon} died", every=0.002,
                                         since=killed.at)
                print(f"\nrr2 withdrew lb1's path {gone * 1000:.0f} ms after {daemon} was killed")
            killed.wait_dead()
        time.sleep(2.0)
    ms = report(f"{daemon} on {node} killed", run.timeline, run.t0)
    assert faults.daemon_pid(lab, node, daemon) not in (None, before)
    assert ms < 1000
    assert answered_after(run.timeline)


def test_web_backend_dies(lab, fleet, converged):
    """apache2 on web1 dies under https load: HAProxy retries on web2, then marks web1 DOWN."""
    from anycastlb.lab import faults
    from anycastlb.lab import fleet as fl

    https = {"kind": "https", "address": "192.0.2.10", "port": 443, "host": "www.example.org", "path": "/healthz",
             "cafile": str(lab.statedir / "pki" / "campus-wildcard.crt")}
    with probing(lab, lambda: faults.control(lab, "web1", "start", "apache2"), https, 0.05, 2.0) as run:
        faults.kill_daemon(lab, "web1", "apache2")
        down = faults.wait_until(lambda: fl.haproxy_states(lab, "lb1")["www-8080"]["web1"].startswith("DOWN"), 30,
                                 "lb1's HAProxy never marked web1 DOWN", every=0.2)
        time.sleep(1.0)
    report("apache2 on web1 killed", run.timeline, run.t0, interval=0.05)
    print(f"HAProxy marked web1 DOWN after {down:.1f} s (checks every 2 s, fall 3)")
    assert len(run.timeline) > 50
    assert not [s for s in run.timeline if not s[1]], "HAProxy retries an idempotent request on the other server"
    faults.wait_until(lambda: fl.haproxy_states(lab, "lb1")["www-8080"]["web1"] == "UP", 30,
                      "web1 did not come back UP", every=0.5)


def test_kdc_dies_and_its_announcement_goes(lab, converged):
    """The KDC on kdc1 dies: healthd on kdc1 withdraws the VIP; kdc2 answers everything."""
    from anycastlb.lab import catalog as cat_mod
    from anycastlb.lab import faults
    from anycastlb.lab.responder import start_responder

    kdc = {"kind": "tcp", "address": "192.0.2.88", "port": 88}
    kdc1 = lab.host("kdc1").address
    _, ports = cat_mod.stand_ins(lab.catalog)
    with faults.BirdSocket(lab, "rr1") as rr1:
        assert rr1.carries("192.0.2.88/32", kdc1)
        with probing(lab, lambda: start_responder(lab, "kdc1", *ports["kdc1"]), kdc) as run:
            stopped_at = time.monotonic()
            lab.stop("kdc1", "responder", grace=0)
            gone = faults.wait_until(lambda: not rr1.carries("192.0.2.88/32", kdc1), 15,
                                     "rr1 still carries kdc1's path", every=0.002, since=stopped_at)
            time.sleep(1.5)
    ms = report("the KDC on kdc1 killed", run.timeline, run.t0)
    print(f"rr1 withdrew kdc1's path {gone * 1000:.0f} ms after the KDC died")
    tail = [s for s in run.timeline if s[0] > run.t0 + gone + 0.5]
    assert tail and all(s[1] and "kdc2" in s[3] for s in tail), "kdc2 answers every request"
    assert gone < 3.0, "a refused connection is a hard failure: withdrawn at the next check (2 s)"
    assert ms < 3500


def test_config_the_checker_rejects_reloads_nothing(lab, fleet, converged):
    """A certificate HAProxy refuses: state.apply on lb1 fails at the check, no file and no PID changes."""
    from anycastlb.lab import faults
    from anycastlb.lab import fleet as fl

    path = lab.statedir / "secrets.yaml"
    good = path.read_text()
    bad = yaml.safe_load(good)
    cert = bad["certificates"]["campus-wildcard"]
    cert["cert"] = cert["cert"].replace(cert["cert"].splitlines()[5], "A" * 64)  # garbled, still PEM-shaped
    before = faults.node_snapshot(lab, "lb1")
    with probing(lab, lambda: path.write_text(good), settle=0.5) as run:
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(fl.FleetError) as err:
            fl.apply(lab, "lb1")
        took = time.monotonic() - run.t0
    print(f"\nstate.apply lb1 refused in {took:.1f} s: {str(err.value)[:300]}")
    assert "haproxy" in str(err.value).lower()
    assert faults.node_snapshot(lab, "lb1") == before, "no file rewritten, no daemon restarted"
    assert report("apply with a rejected certificate", run.timeline, run.t0) == 0.0


def test_bad_catalog_push_is_refused_and_changes_nothing(lab, converged):
    """A push that breaks the catalog: the reactor's orchestration stops at lint; no node changes."""
    from anycastlb.lab import faults, ops

    nodes = ("lb1", "lb2", "rr1", "web1", "kdc1")
    before = {n: faults.node_snapshot(lab, n) for n in nodes}

    def edit(checkout: Path) -> None:
        p = checkout / "campus.yaml"
        p.write_text(p.read_text().replace("cluster: edge\n    backends: [web1, web2]",
                                           "cluster: nosuch\n    backends: [web1, web2]", 1))

    with probing(lab, duration=300, settle=0.5) as run, ops.OrchestrationWatch(lab) as watch:
        ops.push_catalog(lab, edit, "www: a cluster that does not exist")
        ret = watch.wait(300)
        took = time.monotonic() - run.t0
    text = str(ret.get("return"))
    print(f"\nrefused push: the orchestration returned after {took:.1f} s")
    assert ret.get("success") is False
    assert "cluster 'nosuch' does not exist" in text and "campus.yaml" in text, text[:3000]
    assert {n: faults.node_snapshot(lab, n) for n in nodes} == before
    assert report("a refused catalog push", run.timeline, run.t0) == 0.0
