"""The :class:`Lab` object: build, attach to, drive and tear down one lab."""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from . import catalog as cat_mod
from . import machine, net, nodefs, proc

DEFAULT_PREFIX = "aclb"
STATE_FILE = "lab.json"
MARKER = ".anycastlb-lab"  # only a state dir holding this file is ever removed
REPO = Path(__file__).resolve().parents[2]


class LabError(RuntimeError):
    """The lab could not be built, attached to or torn down."""


def default_statedir(prefix: str) -> Path:
    """``/var/tmp/<prefix>-lab``."""
    return Path("/var/tmp") / f"{prefix}-lab"


class Lab:
    """A lab: its namespaces, per-node filesystems and processes, all under one state dir."""

    def __init__(self, prefix: str, statedir: Path, catalog: Path, fabric_ns: str,
                 hosts: dict[str, net.HostPlan], repo: Path = REPO, meta: dict | None = None) -> None:
        self.prefix = prefix
        self.statedir = Path(statedir)
        self.catalog = Path(catalog)
        self.fabric_ns = fabric_ns
        self.hosts = hosts
        self.repo = Path(repo)
        self.meta: dict = meta or {}
        self.registry = proc.Registry(self.statedir)

    # ---- persistence -------------------------------------------------------------------
    def save(self) -> None:
        """Write the lab's description to ``<statedir>/lab.json``."""
        self.statedir.mkdir(parents=True, exist_ok=True)
        (self.statedir / MARKER).touch()
        data = {"prefix": self.prefix, "statedir": str(self.statedir), "catalog": str(self.catalog),
                "fabric_ns": self.fabric_ns, "repo": str(self.repo), "meta": self.meta,
                "hosts": net.plan_to_json(self.hosts)}
        tmp = self.statedir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.statedir / STATE_FILE)

    @classmethod
    def from_statedir(cls, statedir: Path) -> "Lab":
        """Reattach to the lab described in ``statedir``."""
        data = json.loads((Path(statedir) / STATE_FILE).read_text())
        return cls(data["prefix"], Path(data["statedir"]), Path(data["catalog"]), data["fabric_ns"],
                   net.plan_from_json(data["hosts"]), Path(data["repo"]), data.get("meta") or {})

    # ---- queries -----------------------------------------------------------------------
    def names(self, kind: str | None = None) -> list[str]:
        """Host names of the lab, optionally only those of one kind (node, peer, client, external)."""
        return [n for n, h in self.hosts.items() if kind is None or h.kind == kind]

    @property
    def nodes(self) -> list[str]:
        """Catalog node ids."""
        return self.names("node")

    @property
    def peers(self) -> list[str]:
        """Catalog peer routers."""
        return self.names("peer")

    def host(self, name: str) -> net.HostPlan:
        """The plan of one lab host; KeyError names the known hosts."""
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no lab host {name!r}; known: {', '.join(self.hosts)}") from None

    def ns(self, name: str) -> str:
        """Network namespace of ``name``."""
        return self.host(name).ns

    @property
    def init(self) -> str:
        """How the catalog nodes run: ``direct`` (daemons started in namespaces) or ``systemd`` (booted)."""
        return self.meta.get("init", "direct")

    def node_path(self, name: str, path: str) -> Path:
        """Where ``path`` as node ``name`` sees it is, seen from the host (``/run/...``, ``/var/log/...``,
        ``/etc/...``): under the booted node's ``/proc/<PID 1>/root``, or the namespace lab's private trees."""
        if self.init == "systemd":
            return Path(f"/proc/{machine.require_leader(self, name)}/root") / path.lstrip("/")
        for inside, sub in nodefs.BINDS.items():
            if path == inside or path.startswith(inside + "/"):
                return self.node_root(name) / sub / path[len(inside):].lstrip("/")
        if path.startswith("/etc/"):
            return self.node_root(name) / "upper" / "etc" / path[len("/etc/"):]
        raise LabError(f"{path} is not under a node's private /run, /var/log or /etc")

    def node_root(self, name: str) -> Path:
        """Host-side directory of a node's private trees (``run/``, ``log/``, ``upper/etc`` ...)."""
        return nodefs.node_dir(self.statedir, name)

    def log_path(self, name: str, label: str) -> Path:
        """Where a spawned process's stdout/stderr go."""
        return self.statedir / "logs" / f"{name}.{label}.log"

    # ---- running things ----------------------------------------------------------------
    def argv(self, name: str, argv: list[str], cwd: str = "/") -> list[str]:
        """The full command line that runs ``argv`` inside ``name``'s namespaces."""
        h = self.host(name)
        if h.kind == "node" and self.init == "systemd":
            return machine.nsenter_argv(machine.require_leader(self, name), argv, cwd)
        if h.kind == "node":
            return nodefs.nsenter_argv(h.ns, nodefs.mnt_file(self.statedir, name),
                                       nodefs.uts_file(self.statedir, name), argv, cwd)
        return nodefs.nsenter_argv(h.ns, None, None, argv, cwd)

    def exec(self, name: str, argv: list[str], *, input: str | None = None, check: bool = False,
             timeout: float | None = 60, env: dict[str, str] | None = None, cwd: str = "/",
             capture: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``name``'s namespaces and wait for it (text mode)."""
        r = subprocess.run(self.argv(name, argv, cwd), input=input, text=True, timeout=timeout,
                           capture_output=capture, env=nodefs.node_env(env),
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise LabError(f"{name}: {' '.join(argv)} exited {r.returncode}: {(r.stderr or '').strip()}")
        return r

    def spawn(self, name: str, argv: list[str], label: str, *, env: dict[str, str] | None = None,
              logfile: Path | None = None, cwd: str = "/") -> int:
        """Start a long-running ``argv`` in ``name``'s namespaces; record and return its PID.

        ``nsenter`` execs the command, so the recorded PID is the program itself (in a booted
        node it forks into the node's PID namespace first: the program is its child). Output
        goes to ``logfile`` (default ``<statedir>/logs/<name>.<label>.log``).
        """
        log = Path(logfile) if logfile else self.log_path(name, label)
        log.parent.mkdir(parents=True, exist_ok=True)
        old = self.registry.get(name, label)
        if old and proc.alive(old["pid"], old.get("start")):
            raise LabError(f"{name}: {label} already runs as PID {old['pid']}")
        with open(log, "ab") as out:
            p = subprocess.Popen(self.argv(name, argv, cwd), stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, env=nodefs.node_env(env),
                                 start_new_session=True)
        self.registry.add(name, label, p.pid, argv, str(log))
        return p.pid

    def stop(self, name: str, label: str, grace: float = 3.0) -> None:
        """Stop one registered process (only if its PID and start time still match)."""
        e = self.registry.get(name, label)
        if e and proc.alive(e["pid"], e.get("start")):
            # In a booted node nsenter forks into its PID namespace: the program is its child.
            below = machine.descendants(e["pid"]) if self.init == "systemd" else []
            proc.kill_all([e["pid"], *below], grace)
        self.registry.remove(name, label)

    def write_file(self, name: str, path: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to ``path`` as ``name`` sees it (parents created)."""
        d = os.path.dirname(path)
        self.exec(name, ["sh", "-c", 'mkdir -p "$1" && cat > "$2" && chmod "$3" "$2"', "sh",
                         d, path, f"{mode:o}"], input=text, check=True)

    def read_file(self, name: str, path: str) -> str:
        """Read ``path`` as ``name`` sees it."""
        return self.exec(name, ["cat", path], check=True).stdout

    # ---- teardown ----------------------------------------------------------------------
    def namespaces(self) -> list[str]:
        """Every network namespace name that belongs to this lab."""
        return [self.fabric_ns, *(h.ns for h in self.hosts.values())]

    def pids(self) -> list[int]:
        """Every process provably ours: registered ones, and those inside our namespaces."""
        pids = set(self.registry.running())
        for e in self.registry.entries():  # a booted node's launcher: nspawn and the container below it
            if e["label"] == "nspawn" and proc.alive(e["pid"], e.get("start")):
                pids.update(machine.descendants(e["pid"]))
        for ns in self.namespaces():
            pids.update(proc.netns_pids(ns))
        inodes = {i for n in self.nodes
                  for f in (nodefs.mnt_file(self.statedir, n),)
                  if nodefs.is_mountpoint(f) and (i := proc.ns_inode(f)) is not None}
        pids.update(proc.mntns_pids(inodes))
        pids.discard(os.getpid())
        return sorted(pids)

    def down(self) -> None:
        """Kill our processes, unmount our namespace files, delete our namespaces and the state dir."""
        if self.init == "systemd":
            machine.poweroff(self, self.nodes)  # each node shuts down cleanly, all at once
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            proc.kill_all(pids)
        left = self.pids()
        for n in self.nodes:
            nodefs.teardown_node(self.statedir, n)
        for mp in nodefs.mounts_under(self.statedir):
            subprocess.run(["umount", mp], capture_output=True)
            if mp in nodefs.mounts_under(mp):
                subprocess.run(["umount", "-l", mp], capture_output=True)
        failed = net.delete(self.namespaces())
        if self.init == "systemd":
            failed += machine.cleanup(self, self.nodes)
        mounts = nodefs.mounts_under(self.statedir)
        if mounts:
            raise LabError(f"still mounted, state dir kept: {mounts}")
        if (self.statedir / MARKER).exists():
            shutil.rmtree(self.statedir)
        if left or failed:
            raise LabError(f"teardown incomplete: processes {left}, namespaces {failed}")

    def summary(self) -> str:
        """A human-readable description of what the lab holds."""
        rows = [f"lab {self.prefix}: state {self.statedir}, catalog {self.catalog}",
                f"  fabric namespace {self.fabric_ns} (br0 fabric, br1 client net)"]
        for n, h in self.hosts.items():
            addrs = ", ".join(a for i in h.ifaces for a in (i.addr4, i.addr6) if a)
            rows.append(f"  {h.kind:8} {n:10} ns {h.ns:20} {addrs}")
        for e in self.registry.entries():
            state = "running" if proc.alive(e["pid"], e.get("start")) else "exited"
            rows.append(f"  process  {e['host']:10} {e['label']:14} pid {e['pid']:<8} {state}  {e['log']}")
        return "\n".join(rows)


def _hosts_text(hosts: dict[str, net.HostPlan]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for n, h in hosts.items():
        if h.address:
            lines.append(f"{h.address}\t{n}")
        if h.address6:
            lines.append(f"{h.address6}\t{n}")
    return "\n".join(lines) + "\n"


#: Programs ``lab up`` needs: (program, what provides it).
PROGRAMS = [("ip", "iproute2"), ("nsenter", "util-linux"), ("unshare", "util-linux"), ("bird", "bird2"),
            ("birdc", "bird2"), ("haproxy", "haproxy"), ("apache2ctl", "apache2"), ("icinga2", "icinga2"),
            ("nft", "nftables"), ("openssl", "openssl"), ("git", "git")]


def missing_prerequisites(init: str = "direct", salt: bool = True) -> list[str]:
    """What ``lab up`` needs and this machine lacks, one line each (empty: all there)."""
    out = []
    if os.geteuid() != 0:
        out.append("root (the lab creates network namespaces and mounts)")
    env_path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    for prog, pkg in PROGRAMS:
        if not shutil.which(prog, path=env_path):
            out.append(f"{prog} (Debian package {pkg})")
    if salt:
        try:
            __import__("importlib").import_module("salt.version")
        except ImportError:
            out.append(f"Salt importable by {sys.executable} (bash .ci/setup installs it into .venv)")
        for prog in ("salt-master", "salt-minion", "salt"):
            if not (Path(sys.executable).parent / prog).exists():
                out.append(f"{prog} next to {sys.executable}")
        if "proxy" in str(Path(sys.executable).parent):
            # Salt 3008 takes every program whose path contains "proxy" for a proxy minion
            # (salt.utils.platform.is_proxy): no minion would answer test.ping
            out.append(f"a virtualenv whose path does not contain 'proxy' (Salt would take the minions started "
                       f"from {Path(sys.executable).parent} for proxy minions)")
    if init == "systemd":
        if not shutil.which("systemd-nspawn", path=env_path):
            out.append("systemd-nspawn (apt-get install --no-install-recommends systemd-container)")
        if not Path("/lib/systemd/systemd").exists():
            out.append("/lib/systemd/systemd (Debian package systemd)")
        if not Path("/sys/fs/cgroup/unified").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
            out.append("a cgroup v2 hierarchy (/sys/fs/cgroup/unified or /sys/fs/cgroup)")
    return out


def load_lab(prefix: str = DEFAULT_PREFIX, statedir: str | Path | None = None) -> Lab:
    """Reattach to a running lab from its state dir."""
    sd = Path(statedir) if statedir else default_statedir(prefix)
    if not (sd / STATE_FILE).exists():
        raise LabError(f"no lab in {sd}")
    return Lab.from_statedir(sd)


def _cleanup_previous(prefix: str, statedir: Path, fabric_ns: str, hosts: dict[str, net.HostPlan],
                      catalog: Path) -> None:
    """Tear down a previous lab of the same prefix/state dir, whatever state it was left in."""
    if statedir.exists() and any(statedir.iterdir()) and not (statedir / MARKER).exists():
        raise LabError(f"{statedir} exists and is not a lab state dir: refusing to use it")
    if (statedir / STATE_FILE).exists():
        Lab.from_statedir(statedir).down()
    # Namespaces of this prefix named after this catalog's hosts, left by a crash before lab.json.
    stale = Lab(prefix, statedir, catalog, fabric_ns, hosts)
    if any(net.exists(ns) for ns in stale.namespaces()) or statedir.exists():
        stale.down()


@contextlib.contextmanager
def teardown_on_failure(lab: Lab) -> Iterator[Lab]:
    """Tear ``lab`` down if the block fails, is interrupted (SIGINT/SIGTERM/SIGHUP) or the interpreter exits."""
    done = False

    def _atexit() -> None:
        if not done:
            with contextlib.suppress(Exception):
                lab.down()

    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    atexit.register(_atexit)
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGHUP):
            saved[s] = signal.signal(s, _raise)
    try:
        yield lab
    except BaseException:
        with contextlib.suppress(Exception):
            lab.down()
        raise
    finally:
        done = True
        atexit.unregister(_atexit)
        for s, h in saved.items():
            signal.signal(s, h)


def up_network(catalog_path: str | Path, prefix: str = DEFAULT_PREFIX, statedir: str | Path | None = None,
               external: list[tuple[str, str]] | None = None, repo: str | Path = REPO,
               init: str = "direct") -> Lab:
    """Build the network and per-node filesystems of ``catalog_path``'s nodes and peers.

    With ``init="systemd"`` every catalog node boots systemd as PID 1 in its namespace
    (:mod:`anycastlb.lab.machine`) instead of getting the namespace lab's mount namespace.

    ``external`` lists ``(name, ipv4)`` hosts for the client net (backends Salt does not
    manage). A previous lab with the same state dir is torn down first; a failure midway
    tears the half-built lab down before re-raising.
    """
    if init not in ("direct", "systemd"):
        raise LabError(f"unknown init {init!r} (direct or systemd)")
    missing = missing_prerequisites(init, salt=False)
    if missing:
        raise LabError("lab up needs: " + "; ".join(missing))
    cat = cat_mod.load(catalog_path)
    sd = Path(statedir) if statedir else default_statedir(prefix)
    sd = sd.resolve()
    fabric_ns, hosts = net.plan(cat, prefix, list(external or []))
    _cleanup_previous(prefix, sd, fabric_ns, hosts, cat.path)
    lab = Lab(prefix, sd, cat.path, fabric_ns, hosts, Path(repo), {"external": list(external or []),
                                                                  "init": init})
    t0 = time.monotonic()
    with teardown_on_failure(lab):
        lab.save()  # first, so a teardown always knows every name
        net.up(fabric_ns, hosts)
        text = _hosts_text(hosts)
        if init == "systemd":
            for n in lab.nodes:
                machine.prepare_root(lab, n, text)
            lab.meta["network_seconds"] = round(time.monotonic() - t0, 2)
            for n in lab.nodes:
                machine.launch(lab, n)
            lab.meta["boot_seconds"] = machine.wait_booted(lab, lab.nodes)
        else:
            nodefs.prepare_ns_dir(sd)
            for n in lab.nodes:
                nodefs.setup_node(sd, n, hosts[n].ns, text)
            lab.meta["network_seconds"] = round(time.monotonic() - t0, 2)
        lab.save()
    return lab
