"""Faults in the lab, and their repair: a link down, a daemon killed, a daemon restarted.

Used by the fault tests (``tests/integration/test_faults_lab.py``) and the benchmarks
(``benchmarks/``). Every process signalled here is proven to belong to the lab first:
its PID comes from a pidfile inside a node's private ``/run`` *and* the process lives
in that node's mount namespace. Nothing is looked up by name.

:class:`BirdSocket` talks to a node's BIRD control socket from the host side (the
socket is under the node's state directory), so a route reflector's view can be read
every few milliseconds without starting ``birdc``.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import net, nodefs, proc
from .salt import PYTHON

if TYPE_CHECKING:
    from .core import Lab


class FaultError(RuntimeError):
    """A fault could not be injected or repaired; the message says where."""


def pidfile(daemon: str) -> str:
    """The production pidfile of a daemon anycastlb runs (from the service registry)."""
    from ..service import services

    try:
        return services()[daemon].pidfile
    except KeyError:
        raise FaultError(f"unknown daemon {daemon!r} (known: {', '.join(sorted(services()))})") from None


def host_path(lab: "Lab", node: str, path: str) -> Path:
    """Where a path under a node's private ``/run`` or ``/var/log`` is, seen from the host."""
    if lab.init == "systemd":
        return lab.node_path(node, path)
    for inside, name in nodefs.BINDS.items():
        if path == inside or path.startswith(inside + "/"):
            return lab.node_root(node) / name / path[len(inside):].lstrip("/")
    raise FaultError(f"{path} is not under a node's private /run or /var/log")


def node_pids(lab: "Lab", node: str) -> set[int]:
    """Every process living in ``node``'s mount namespace (a booted node: its PID 1 and everything below)."""
    if lab.init == "systemd":
        from . import machine
        pid = machine.leader(lab, node)
        return {pid, *machine.descendants(pid)} if pid else set()
    inode = proc.ns_inode(nodefs.mnt_file(lab.statedir, node))
    return set(proc.mntns_pids({inode})) if inode is not None else set()


def daemon_pid(lab: "Lab", node: str, daemon: str) -> int | None:
    """The PID in the daemon's pidfile on ``node``, if that process runs there."""
    try:
        text = host_path(lab, node, pidfile(daemon)).read_text().split()
    except OSError:
        return None
    pid = int(text[0]) if text and text[0].isdigit() else None
    return pid if pid and proc.alive(pid) and pid in node_pids(lab, node) else None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children first scanned from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


@dataclass(frozen=True)
class Killed:
    """A daemon's process tree SIGKILLed: ``at`` is ``time.monotonic()`` just before the first
    ``kill(2)``, the instant a measurement of what follows must start from."""

    node: str
    daemon: str
    pid: int
    tree: tuple[int, ...]
    at: float

    def wait_dead(self, timeout: float = 10) -> None:
        """Until no process of the tree is alive (the kernel reaps them in a few ms)."""
        wait_until(lambda: not any(proc.alive(p) for p in self.tree), timeout,
                   f"{self.node}: {self.daemon} still alive after SIGKILL")


def kill_daemon(lab: "Lab", node: str, daemon: str, wait: bool = True) -> Killed:
    """SIGKILL a daemon and every process below it (a crash, not a stop).

    ``wait=False`` returns right after the signals are sent, so the caller can watch what
    follows from :attr:`Killed.at` on (and call :meth:`Killed.wait_dead` afterwards).
    """
    pid = daemon_pid(lab, node, daemon)
    if pid is None:
        raise FaultError(f"{node}: {daemon} does not run")
    ours = node_pids(lab, node)
    tree = tuple(p for p in descendants(pid) if p in ours)
    at = time.monotonic()
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed = Killed(node, daemon, pid, tree, at)
    if wait:
        killed.wait_dead()
    return killed


def control(lab: "Lab", node: str, verb: str, daemon: str, timeout: float = 60) -> str:
    """``ServiceControl().VERB(DAEMON)`` inside ``node``: the way anycastlb itself starts daemons."""
    code = ("import sys\n"
            "from anycastlb.service import ServiceControl\n"
            "print(getattr(ServiceControl(), sys.argv[1])(sys.argv[2]))\n")
    r = lab.exec(node, [PYTHON, "-c", code, verb, daemon], timeout=timeout, cwd=str(lab.repo))
    if r.returncode != 0:
        raise FaultError(f"{node}: {verb} {daemon} failed: {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout.strip()


def link_down(lab: "Lab", node: str, iface: str = "eth0") -> None:
    """Take a node's interface down (its peers see nothing; only BFD or the hold timer notice)."""
    net.ip_batch(lab.ns(node), [f"link set {iface} down"])


def link_up(lab: "Lab", node: str, iface: str = "eth0") -> None:
    """Bring the interface back with the addresses and routes the kernel flushed."""
    net.ip_batch(lab.ns(node), net.host_commands(lab.host(node), iface))


def wait_until(cond: Callable[[], object], timeout: float, what: str, every: float = 0.05,
               since: float | None = None) -> float:
    """Poll ``cond`` until true; return the seconds it took (counted from the monotonic
    time ``since`` when given, e.g. :attr:`Killed.at`); raise FaultError naming ``what``."""
    from ..poll import poll_until

    polled = poll_until(cond, bool, timeout, every, since)
    if not polled.done:
        raise FaultError(f"{what} (waited {timeout:.0f} s)")
    return polled.waited


class BirdSocket:
    """One open connection to a node's BIRD control socket (``/run/bird/bird.ctl``)."""

    def __init__(self, lab: "Lab", node: str, timeout: float = 5.0) -> None:
        self.node = node
        self.path = str(host_path(lab, node, "/run/bird/bird.ctl"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.path)
        self._buf = b""
        self._reply()  # the greeting: 0001 BIRD x.y ready.

    def _reply(self) -> str:
        lines = []
        while True:
            while b"\n" not in self._buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise FaultError(f"{self.node}: BIRD closed its control socket")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            lines.append(text)
            if len(text) >= 5 and text[:4].isdigit() and text[4] == " ":
                return "\n".join(lines)

    def query(self, command: str) -> str:
        """Send one CLI command, return the whole reply as ``birdc`` prints it."""
        from ..answers.bird import unframe

        self.sock.sendall(command.encode() + b"\n")
        return unframe(self._reply())

    def next_hops(self, prefix: str) -> set[str]:
        """The BGP next hops of every path the node holds for ``prefix``."""
        from ..answers.bird import parse_routes

        return {h for r in parse_routes(self.query(f"show route {prefix} all")) for h in r.next_hops}

    def carries(self, prefix: str, from_address: str) -> bool:
        """True while the node holds a path for ``prefix`` with next hop ``from_address``."""
        return str(ipaddress.ip_address(from_address)) in self.next_hops(prefix)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> "BirdSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def node_snapshot(lab: "Lab", node: str, daemons: tuple[str, ...] = ("haproxy", "bird", "healthd", "apache2")
                  ) -> dict[str, object]:
    """What a refused change must leave alone on ``node``: every file of its private ``/etc``
    (sha256 and mtime; Salt's own files excepted) and the PID of each daemon it runs."""
    import hashlib

    root = lab.node_root(node) / "upper" / "etc"
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "salt" not in p.relative_to(root).parts:
            files[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return {"files": files, "pids": {d: daemon_pid(lab, node, d) for d in daemons}}
