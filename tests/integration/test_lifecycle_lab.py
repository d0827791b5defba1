"""Taking things away, through git (issue 13): every case is a catalog pushed with ``anycastlb lab
deploy`` (git push, the hook, the reactor, ``orch.deploy``) to ONE lab of a small multi-file
catalog (tests/data/lifecycle/, the campus example made small), under client load on what
stays. After each: the deploy succeeded, no request to what stays failed, and nothing is left
behind on any node (:func:`anycastlb.lab.leftovers.leftovers`: no VIP on ``lo``, no route at the
peers, no frontend, backend, vhost, firewall hole or Icinga object, no daemon of a lost role).

The cases build on each other (each pushes the catalog the previous one left, changed):
parts of a service; an anycast backend leaving (web1 also loses its anycast role); a service
moving to another cluster (the peer's routes sampled throughout: never unannounced); a node
leaving its cluster (drained first); a node removed from the catalog; a node losing a role.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

SOURCE = Path(__file__).resolve().parents[1] / "data" / "lifecycle"


@pytest.fixture(scope="module")
def lab():
    from anycastlb.lab.cli import temporary_lab

    if not shutil.which("haproxy") or not shutil.which("ip"):
        pytest.skip("the lab needs iproute2 and the daemons (run .ci/setup)")
    with temporary_lab(SOURCE, tag="life", restart_minions=True) as the_lab:
        print(f"\nlifecycle lab up in {the_lab.up_seconds:.1f} s")  # type: ignore[attr-defined]
        yield the_lab


class Catalog:
    """The operator's working copy: the catalog as last deployed, changed file by file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(SOURCE, root)

    def edit(self, file: str, change: Callable[[dict[str, Any]], None]) -> None:
        p = self.root / file
        data = yaml.safe_load(p.read_text())
        change(data)
        p.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def catalog(lab, tmp_path_factory):
    return Catalog(tmp_path_factory.mktemp("lifecycle") / "catalog")


def targets(lab, catalog: Catalog, services: list[str]) -> list[dict[str, Any]]:
    """Every VIP and port of ``services`` the client may reach (IPv4 and IPv6) in both the deployed
    catalog and the working copy (what stays), as probe specs."""
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab import fleet as fl

    old = {(s["address"], s["port"]) for s in fl.probe_specs(lab, compile_catalog(lab.catalog), "client", None)}
    fleet = compile_catalog(catalog.root)
    specs = [s for s in fl.probe_specs(lab, fleet, "client", None)
             if s["allowed"] and s["service"] in services and (s["address"], s["port"]) in old]
    assert {s["service"] for s in specs} == set(services), specs
    return [dict(s, timeout=2.0) for s in specs]


@contextlib.contextmanager
def under_load(lab, specs: list[dict[str, Any]], tag: str) -> Iterator[dict[str, Any]]:
    """A bounded load loop (anycastlb.lab.probe --load) in the client over ``specs`` for the block;
    its result lands in the yielded dict."""
    from anycastlb.lab.fleet import PYTHON

    stop = lab.statedir / f"life-{tag}.stop"
    stop.unlink(missing_ok=True)
    spec = {"targets": specs, "interval": 0.01, "duration": 240, "max_requests": 40000, "stop_file": str(stop)}
    proc = subprocess.Popen(lab.argv("client", [PYTHON, "-m", "anycastlb.lab.probe", "--load", "-"],
                                     cwd=str(lab.repo)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    proc.stdin = None
    result: dict[str, Any] = {}
    try:
        time.sleep(1)
        yield result
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=60)
        result.update(json.loads(out))


def deploy(lab, catalog: Catalog, stays: list[str], tag: str):
    """``lab deploy`` of the working copy under load on ``stays``: (the deployment, the load)."""
    from anycastlb.lab import ops

    out = io.StringIO()
    with under_load(lab, targets(lab, catalog, stays), tag) as load:
        done = ops.deploy(lab, catalog.root, message=f"lifecycle: {tag}", timeout=400, out=out)
        time.sleep(2)  # what stays keeps serving after the end too
    print(f"\n{tag}:\n{out.getvalue()}load on {', '.join(stays)}: {load['requests']} requests, "
          f"{load['failed']} failed")
    assert done.ok, out.getvalue()
    assert load["requests"] > 100 and load["failed"] == 0, load["failures"]
    return done, load


def nothing_left(lab, timeout: float = 20.0) -> None:
    """Every node's :func:`leftovers` is empty (routes may take a BGP update to go: polled)."""
    from anycastlb.lab.leftovers import leftovers_everywhere
    from anycastlb.poll import poll_until

    polled = poll_until(lambda: leftovers_everywhere(lab), lambda left: not left, timeout, 1.0)
    assert not polled.value, "left behind:\n" + "\n".join(polled.value)


def converged(lab) -> None:
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab import fleet as fl

    fl.wait_converged(lab, compile_catalog(lab.catalog), timeout=30)


def unreachable(lab, address: str, port: int) -> None:
    from anycastlb.lab import fleet as fl

    [res] = fl.run_probes(lab, "client", [{"kind": "tcp", "address": address, "port": port, "timeout": 1.0}])
    assert not res["ok"], res


def test_the_lab_starts_with_nothing_left_over(lab, catalog):
    """The helper's baseline: on the fleet as built, every node has exactly what the catalog renders;
    and what is planted on a node is found."""
    from anycastlb.lab.leftovers import leftovers
    from anycastlb.render import HEADER

    converged(lab)
    nothing_left(lab, timeout=0)
    stale = "/etc/apache2/sites-enabled/anycastlb-gone.conf"
    lab.exec("lb1", ["ip", "addr", "add", "192.0.2.99/32", "dev", "lo"], check=True)
    lab.write_file("web1", stale, f"# {HEADER}\n")
    try:
        assert leftovers(lab, "lb1") == ["lb1: VIP 192.0.2.99 still on lo"]
        assert leftovers(lab, "web1") == [f"web1: {stale} (anycastlb) left behind"]
    finally:
        lab.exec("lb1", ["ip", "addr", "del", "192.0.2.99/32", "dev", "lo"], check=True)
        lab.exec("web1", ["rm", "-f", stale], check=True)


def test_parts_of_a_service_removed(lab, catalog):
    """A whole service (intranet), one VIP (api's 192.0.2.13), one port (api's 81), one backend (www's web2)."""
    def change(d):
        s = d["services"]
        del s["intranet"]
        s["api"]["vip"] = ["192.0.2.12"]
        s["api"]["ports"] = [80]
        s["www"]["backends"] = ["web1"]
    catalog.edit("services/web.yaml", change)
    deploy(lab, catalog, ["www", "api", "imap", "kdc"], "parts")
    converged(lab)
    nothing_left(lab)
    unreachable(lab, "192.0.2.11", 80)
    unreachable(lab, "192.0.2.13", 80)
    unreachable(lab, "192.0.2.12", 81)
    cfg = lab.read_file("lb1", "/etc/haproxy/haproxy.cfg")
    assert "server web2" not in cfg.split("backend www", 1)[1].split("backend ", 1)[0]


def test_anycast_backend_leaves_its_service(lab, catalog):
    """kdc loses web1 (its only anycast service: web1 loses the anycast role); web2 keeps announcing."""
    catalog.edit("services/kdc.yaml", lambda d: d["services"]["kdc"].update(backends=["web2"]))
    deploy(lab, catalog, ["kdc", "www", "api"], "anycast")
    converged(lab)
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab import fleet as fl
    carried = fl.announcers(lab, compile_catalog(lab.catalog))
    assert carried["192.0.2.88/32"] == ["web2"] and carried["2001:db8:1::88/128"] == ["web2"], carried
    nothing_left(lab)


class RouteSampler:
    """Samples the peer's routes for one prefix (birdc on its socket) in a thread; counts the samples
    that had no route."""

    def __init__(self, lab, peer: str, prefix: str) -> None:
        self.lab, self.peer, self.prefix = lab, peer, prefix
        self.samples = self.missing = 0
        self.gaps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from anycastlb.answers.bird import parse_routes
        from anycastlb.lab.peer import birdc

        t0 = time.monotonic()
        while not self._stop.is_set():
            text = birdc(self.lab, self.peer, "show", "route", "for", self.prefix.split("/")[0], "all")
            have = any(r.net == self.prefix for r in parse_routes(text))
            self.samples += 1
            if not have:
                self.missing += 1
                self.gaps.append(round(time.monotonic() - t0, 2))
            self._stop.wait(0.05)

    def __enter__(self) -> "RouteSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_service_moves_to_another_cluster(lab, catalog):
    """imap moves from west (lb3) to edge (lb1, lb2): announced by edge before west withdraws it."""
    from anycastlb.compiler import compile_catalog
    from anycastlb.lab import fleet as fl

    catalog.edit("services/mail.yaml", lambda d: d["services"]["imap"].update(cluster="edge"))
    with RouteSampler(lab, lab.peers[0], "192.0.2.20/32") as sampler:
        deploy(lab, catalog, ["imap", "www", "api", "kdc"], "move")
    print(f"peer {lab.peers[0]}: 192.0.2.20/32 sampled {sampler.samples} times, missing {sampler.missing}")
    assert sampler.samples > 20 and sampler.missing == 0, sampler.gaps
    converged(lab)
    assert fl.announcers(lab, compile_catalog(lab.catalog))["192.0.2.20/32"] == ["lb1", "lb2"]
    nothing_left(lab)


def test_node_leaves_a_cluster(lab, catalog):
    """lb2 leaves edge: drained first (the orchestration drains it before it is applied), then removed."""
    from anycastlb.lab import ops

    catalog.edit("fleet.yaml", lambda d: d["clusters"]["edge"].update(nodes=["lb1"]))
    done, _ = deploy(lab, catalog, ["www", "api", "imap"], "leave")
    steps = ops.orchestration_steps(done.ret)
    assert "drain lb2" in steps and steps.index("drain lb2") < steps.index("apply lb2"), steps
    converged(lab)
    nothing_left(lab)


def test_node_removed_from_the_catalog(lab, catalog):
    """lb3 (and its now empty cluster west) leaves the catalog: its sessions, filters, holes, Icinga host go."""
    def change(d):
        del d["nodes"]["lb3"]
        del d["clusters"]["west"]
    catalog.edit("fleet.yaml", change)
    deploy(lab, catalog, ["www", "api", "imap", "kdc"], "remove-node")
    converged(lab)
    nothing_left(lab)


def test_node_loses_a_role(lab, catalog):
    """salt loses the monitoring role: icinga2 (and the BIRD it read routes with) stopped, configs gone."""
    catalog.edit("fleet.yaml", lambda d: d["nodes"]["salt"].update(roles=["salt-master"]))
    deploy(lab, catalog, ["www", "api", "imap", "kdc"], "lose-role")
    converged(lab)
    nothing_left(lab)
