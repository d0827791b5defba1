"""Catalog nodes that boot systemd as PID 1 (``anycastlb lab up --init systemd``).

Each node is a ``systemd-nspawn --boot`` container in the node's network namespace:

* its root is an overlayfs with the host's ``/`` as the lower layer and, as the upper
  one, a tmpfs of its own (``<statedir>/machines/<node>/fs``), mounted by ``lab up``
  and kept until ``lab down``: a rebooted node finds its ``/etc`` and ``/var`` as it
  left them, like a disk;
* before the first boot nothing is enabled in it: every ``*.wants`` link of the host is
  removed (the Salt states enable what the node runs) and every other unit enabled on
  the host is masked (``systemd.mask=``); it gets its own ``/etc/hostname``,
  ``/etc/hosts``, machine-id and no DNS, and no host SSH keys;
* the repo, the venv, the catalog's directory and the state dir are bound in
  (``--bind=…:norbind``), so the master reads the catalog and the minions load
  anycastlb from the same paths as in the namespace lab;
* a launcher shell runs ``systemd-nspawn`` again when the container exits for a reboot
  (exit status 133); before it does, the namespace loses what a real reboot loses (the
  VIPs on ``lo``, routes outside the main table, the nftables ruleset);
* with no systemd on the host, ``--keep-unit`` runs the container in cgroups of its
  own (``name=systemd``, ``unified``, ``memory``: ``<prefix>-<node>``), removed at
  teardown together with nspawn's ``/run/systemd/nspawn/*/<machine>`` entries.

Commands run in a node through ``nsenter -t <PID 1> -a -r``; its files are visible
from the host under ``/proc/<PID 1>/root``.
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..poll import poll_until
from ..render.bird import HEALTH_TABLE
from . import proc

if TYPE_CHECKING:
    from .core import Lab

CGROUP_CONTROLLERS = ("systemd", "unified", "memory")
#: The units of the fleet: never masked (the Salt states enable the ones a node runs).
FLEET_UNITS = ("haproxy.service", "bird.service", "apache2.service", "icinga2.service", "nftables.service",
               "salt-minion.service", "salt-master.service", "anycastlb-healthd.service")
WANTS_DIRS = ("multi-user.target.wants", "timers.target.wants", "getty.target.wants", "sysinit.target.wants",
              "sockets.target.wants", "network-online.target.wants", "default.target.wants")
BOOT_TIMEOUT_S = 60.0
REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container asked for a reboot


class MachineError(RuntimeError):
    """A node container could not be prepared, booted or reached."""


def machine_dir(statedir: Path, node: str) -> Path:
    """Everything of one node container: ``fs`` (tmpfs: upper, work), ``root`` (the overlay)."""
    return Path(statedir) / "machines" / node


def machine_name(lab: "Lab", node: str) -> str:
    """The container's (and its cgroups') name."""
    return f"{lab.prefix}-{node}"


def host_masks(root: Path = Path("/")) -> list[str]:
    """Units enabled on the host that a node must not run: every ``*.wants`` entry not of the fleet."""
    out: set[str] = set()
    for d in WANTS_DIRS:
        for p in (root / "etc/systemd/system" / d).glob("*"):
            if p.name not in FLEET_UNITS:
                out.add(p.name)
    return sorted(out)


def _run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise MachineError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def prepare_root(lab: "Lab", node: str, hosts_text: str) -> Path:
    """Mount the node's tmpfs and overlay and write its own files; returns the root."""
    md = machine_dir(lab.statedir, node)
    fs, root = md / "fs", md / "root"
    fs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", "mode=0755", f"aclb-{node}", str(fs)])
    (fs / "upper").mkdir()
    (fs / "work").mkdir()
    _run(["mount", "-t", "overlay", f"aclb-{node}", "-o",
          f"lowerdir=/,upperdir={fs / 'upper'},workdir={fs / 'work'}", str(root)])
    st = os.stat(root)  # nspawn locks the image by its device and inode: remembered for the cleanup
    (md / "nspawn-lock").write_text(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}\n")
    etc = root / "etc"
    for d in WANTS_DIRS:  # nothing enabled: the Salt states enable what the node runs
        for p in (etc / "systemd/system" / d).glob("*"):
            p.unlink()
    for p in (etc / "ssh").glob("ssh_host_*"):
        p.unlink()
    for name in ("hostname", "mailname", "hosts", "resolv.conf", "machine-id"):
        (etc / name).unlink(missing_ok=True)
    (etc / "hostname").write_text(node + "\n")
    (etc / "mailname").write_text(node + "\n")
    (etc / "hosts").write_text(hosts_text)
    # No nameserver line: lookups fail at once, nothing leaves the lab.
    (etc / "resolv.conf").write_text("# anycastlb lab: no DNS\noptions timeout:1 attempts:1\n")
    (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    for d in ("etc/salt", "var/cache/salt", "var/log/salt", "var/lib/anycastlb", "etc/anycastlb"):
        shutil.rmtree(root / d, ignore_errors=True)
    for d in ("etc/salt/minion.d", "etc/salt/master.d", "etc/anycastlb", "etc/nftables.d", "var/lib/anycastlb",
              "var/cache/salt", "var/log/salt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


def binds(lab: "Lab") -> list[str]:
    """Host directories every node sees at the same path (no submounts: ``norbind``)."""
    wanted = [lab.repo, Path(sys.prefix), Path(lab.catalog).resolve().parent, lab.statedir]
    out: list[Path] = []
    for p in sorted({Path(os.path.realpath(w)) for w in wanted}, key=lambda p: len(p.parts)):
        if not any(p == o or o in p.parents for o in out):
            out.append(p)
    return [f"--bind={p}:{p}:norbind" for p in out]


def launcher_script(lab: "Lab", node: str) -> str:
    """The shell that boots the node, and boots it again after a reboot."""
    q = shlex.quote
    name = machine_name(lab, node)
    ns = lab.ns(node)
    root = machine_dir(lab.statedir, node) / "root"
    nspawn = ["systemd-nspawn", "--quiet", f"--directory={root}", f"--machine={name}", "--register=no",
              "--keep-unit", f"--network-namespace-path=/run/netns/{ns}", "--boot",
              "--capability=CAP_NET_ADMIN", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
              *binds(lab), *(f"systemd.mask={u}" for u in host_masks())]
    cg = " ".join(q(f"/sys/fs/cgroup/{c}/{name}") for c in CGROUP_CONTROLLERS)
    reset = [  # what a real reboot loses; the network namespace outlives the container
        f"ip -n {q(ns)} -4 addr flush dev lo scope global",
        f"ip -n {q(ns)} -6 addr flush dev lo scope global",
        f"ip -n {q(ns)} -4 route flush table {HEALTH_TABLE} 2>/dev/null",
        f"ip -n {q(ns)} -6 route flush table {HEALTH_TABLE} 2>/dev/null",
        f"ip netns exec {q(ns)} nft flush ruleset",
    ]
    return "\n".join([
        "set -u",
        "while :; do",
        f"  ( for d in {cg}; do mkdir -p \"$d\" && echo $BASHPID > \"$d/cgroup.procs\" || exit 97; done",
        # /proc/sys/net writable (nspawn makes it so only with --private-network): Salt sets
        # per-namespace sysctls (docs/salt.md), as on a host.
        f"    SYSTEMD_NSPAWN_API_VFS_WRITABLE=network exec {shlex.join(nspawn)} ) </dev/null",
        "  rc=$?",
        f"  [ $rc -eq {REBOOT_EXIT} ] || exit $rc",
        "  echo \"anycastlb lab: node rebooting\"",
        *(f"  {r}" for r in reset),
        "done",
    ])


def launch(lab: "Lab", node: str) -> int:
    """Start the node's launcher (host namespaces); its PID goes into the lab's registry."""
    log = lab.log_path(node, "nspawn")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(["bash", "-c", launcher_script(lab, node)], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    lab.registry.add(node, "nspawn", p.pid, ["systemd-nspawn", machine_name(lab, node)], str(log))
    return p.pid


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (through /proc/PID/task/PID/children)."""
    out, todo = [], _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def leader(lab: "Lab", node: str) -> int | None:
    """PID (on the host) of the node's systemd, or None while it is not booted."""
    e = lab.registry.get(node, "nspawn")
    if not e or not proc.alive(e["pid"], e.get("start")):
        return None
    for sub in _children(e["pid"]):  # the ( ... exec systemd-nspawn ) of this boot
        if _comm(sub) != "systemd-nspawn":
            continue
        for child in _children(sub):
            if _comm(child) == "systemd":
                return child
    return None


def require_leader(lab: "Lab", node: str) -> int:
    """The node's PID 1 (on the host); :class:`MachineError` if the node is not up."""
    pid = leader(lab, node)
    if pid is None:
        raise MachineError(f"{node}: its systemd is not running (see {lab.log_path(node, 'nspawn')})")
    return pid


def nsenter_argv(pid: int, argv: list[str], cwd: str = "/") -> list[str]:
    """Run ``argv`` inside the container whose PID 1 is ``pid`` (all its namespaces, its root).

    nsenter opens ``--wd`` before it enters the root, so the directory is named through
    ``/proc/PID/root``.
    """
    return ["nsenter", "-t", str(pid), "-a", "-r", f"--wd=/proc/{pid}/root/{cwd.lstrip('/')}", "--", *argv]


def system_state(lab: "Lab", node: str) -> str:
    """``systemctl is-system-running`` in the node ("" while it cannot answer)."""
    pid = leader(lab, node)
    if pid is None:
        return ""
    r = subprocess.run(nsenter_argv(pid, ["systemctl", "is-system-running"]), capture_output=True, text=True,
                       timeout=30)
    return r.stdout.strip()


def wait_booted(lab: "Lab", nodes: list[str], timeout: float = BOOT_TIMEOUT_S) -> float:
    """Wait until every node's systemd says running (or degraded: named in the error otherwise)."""
    t0 = time.monotonic()
    pending = set(nodes)
    states: dict[str, str] = {}
    while pending and time.monotonic() - t0 < timeout:
        for n in sorted(pending):
            states[n] = system_state(lab, n)
            if states[n] in ("running", "degraded"):
                pending.discard(n)
        if pending:
            time.sleep(0.1)
    if pending:
        raise MachineError("nodes not booted after %.0f s: %s" % (timeout, ", ".join(
            f"{n} ({states.get(n) or 'no systemd'}; {lab.log_path(n, 'nspawn')})" for n in sorted(pending))))
    return round(time.monotonic() - t0, 2)


def failed_units(lab: "Lab", node: str) -> list[str]:
    """Units in failed state in the node."""
    r = subprocess.run(nsenter_argv(require_leader(lab, node), ["systemctl", "--failed", "--no-legend",
                                                                   "--plain"]),
                       capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def reboot(lab: "Lab", node: str) -> None:
    """``systemctl reboot`` in the node: the container exits 133 and its launcher boots it again."""
    subprocess.run(nsenter_argv(require_leader(lab, node), ["systemctl", "reboot"]), capture_output=True,
                   timeout=30)


def poweroff(lab: "Lab", nodes: list[str], timeout: float = 10.0) -> list[int]:
    """Power every node off (SIGRTMIN+4 to its systemd), wait for the launchers; returns those still alive."""
    import signal
    launchers = []
    for n in nodes:
        e = lab.registry.get(n, "nspawn")
        if not e or not proc.alive(e["pid"], e.get("start")):
            continue
        launchers.append(e)
        pid = leader(lab, n)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGRTMIN + 4)
            except ProcessLookupError:
                pass
    poll_until(lambda: not any(proc.alive(e["pid"], e.get("start")) for e in launchers), timeout=timeout,
               interval=0.1)
    return [e["pid"] for e in launchers if proc.alive(e["pid"], e.get("start"))]


def cleanup(lab: "Lab", nodes: list[str]) -> list[str]:
    """Remove the nodes' cgroups and nspawn's runtime entries; returns what could not be removed."""
    left = []
    for n in nodes:
        name = machine_name(lab, n)
        for c in CGROUP_CONTROLLERS:
            top = Path(f"/sys/fs/cgroup/{c}/{name}")
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with _quiet():
                    d.rmdir()
            with _quiet():
                top.rmdir()
            if top.exists():
                left.append(str(top))
        lock = machine_dir(lab.statedir, n) / "nspawn-lock"
        if lock.exists():
            Path(lock.read_text().strip()).unlink(missing_ok=True)
        base = Path("/run/systemd/nspawn")
        for p in (base.glob(f"*/{name}") if base.is_dir() else []):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    base = Path("/run/systemd/nspawn")
    if base.is_dir():  # nspawn's own empty dirs (locks, propagate, unix-export) go when nothing is left in them
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with _quiet():
                d.rmdir()
        with _quiet():
            base.rmdir()
    return left


class _quiet:
    """``with _quiet(): ...`` ignores an OSError (a busy or non-empty directory)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)
