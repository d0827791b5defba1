"""Starting, reloading and stopping daemons: the one switch between service managers.

Production hosts run systemd: :class:`ServiceControl` drives the daemons' units
(``systemctl``; their paths in :mod:`anycastlb.paths`). The namespace lab has no init
system in its nodes: there the daemons run as direct processes with their pidfiles,
started by :class:`anycastlb.lab.direct.DirectControl` (the lab's own stand-in for an
init system, not part of what a production host runs). The mode is chosen in one place,
:func:`detect_mode`, and can be forced with the pillar key ``anycastlb:service_mode`` or
the environment variable ``ANYCASTLB_SERVICE_MODE`` (``systemd`` or ``direct``).

Each daemon is one :class:`Service` entry in :data:`SERVICES` (its systemd unit,
its direct-mode command, pidfile and reload method); a renderer module declares the
``SERVICE`` of its daemon and :func:`services` loads them. A reload is *confirmed*, never assumed:

- HAProxy (master-worker): the server states are dumped to the state file, the
  master gets SIGUSR2 (also under systemd: anycastlb checked the config before it replaced
  the live one, and the unit's ExecReload would parse it once more), and the master CLI
  (``show proc``) must show a new worker and no new failed reload;
- BIRD: ``birdc configure`` succeeds only if its output says so (its exit code
  can be 0 on a refused config);
- anycastlb-healthd, apache2, icinga2: ``systemctl reload`` (direct mode: their signal).

Besides daemons, a node has one piece of state that is not a file: its VIPs on
``lo`` (:func:`sync_vips`, run with the ``healthd`` step).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Callable, Sequence

from .paths import DIRECT, DaemonPaths, for_mode
from .render import under


class ServiceError(RuntimeError):
    """A daemon could not be started or reloaded; the message says why."""


def detect_mode(forced: str | None = None) -> str:
    """``systemd`` where systemd is PID 1, else ``direct``."""
    mode = forced or os.environ.get("ANYCASTLB_SERVICE_MODE")
    if mode:
        if mode not in ("systemd", "direct"):
            raise ServiceError(f"unknown service mode {mode!r} (systemd or direct)")
        return mode
    return "systemd" if os.path.isdir("/run/systemd/system") else "direct"


@dataclass(frozen=True)
class Service:
    """How one daemon is run.

    ``command`` is the direct-mode argv (production paths; :class:`ServiceControl`
    places them under its root); ``daemonizes`` says whether the program forks
    into the background itself and writes ``pidfile`` (else anycastlb detaches
    it and writes the pidfile); ``reload`` is ``"birdc"``, ``"haproxy"`` or a
    signal name; ``ready`` is a path that exists once the daemon serves;
    ``dirs`` are created before the start.
    """

    name: str
    unit: str
    command: tuple[str, ...]
    pidfile: str
    reload: str = "SIGHUP"
    daemonizes: bool = True
    ready: str = ""
    dirs: tuple[str, ...] = ()
    log: str = ""
    paths: tuple[str, ...] = field(default=())  # argv items that are paths (placed under root)
    #: No process: ``command`` loads the config into the kernel (nftables); ``probe``
    #: exits 0 while it is loaded. Both modes run ``command`` (the distribution's unit
    #: loads its own file, not ours).
    oneshot: bool = False
    probe: tuple[str, ...] = ()
    #: A oneshot's "stop": takes its config out of the kernel again (nftables: our table).
    unload: tuple[str, ...] = ()


SERVICES: dict[str, Service] = {}


def register_service(service: Service) -> Service:
    """Add (or replace) a daemon's entry (this module's own daemons; the renderers' come
    through :func:`services`)."""
    SERVICES[service.name] = service
    return service


def services() -> dict[str, Service]:
    """Every daemon's entry: this module's own, and the ``SERVICE`` the renderer modules declare
    (loaded here, so no caller imports a renderer for its side effect)."""
    from .render import daemons

    daemons()  # fills the registries once (anycastlb.render._load_all)
    return SERVICES


def _healthd_argv() -> tuple[str, ...]:
    """The health agent under this Python (the one that imports anycastlb), as the systemd unit
    runs it: no dependence on PATH or on an installed console script."""
    return (sys.executable, "-m", "anycastlb.healthd_main")


_D = DIRECT  # direct-mode paths; systemd mode uses the units' own (anycastlb/paths.py)
register_service(Service(
    name="haproxy", unit="haproxy",
    command=("haproxy", "-W", "-D", "-f", "/etc/haproxy/haproxy.cfg", "-p", _D.haproxy_pidfile,
             "-S", _D.haproxy_master_socket),
    paths=("/etc/haproxy/haproxy.cfg", _D.haproxy_pidfile, _D.haproxy_master_socket),
    pidfile=_D.haproxy_pidfile, reload="haproxy", ready=_D.haproxy_master_socket,
    dirs=("/run/haproxy", "/var/lib/haproxy")))
register_service(Service(
    name="bird", unit="bird",
    # -g bird: the control socket is root:bird 0660, so members of group bird (the monitoring
    # node's plugin user) may read routes; BIRD itself keeps running as root.
    command=("bird", "-c", "/etc/bird/bird.conf", "-s", _D.bird_socket, "-P", _D.bird_pidfile,
             "-g", "bird"),
    paths=("/etc/bird/bird.conf", _D.bird_socket, _D.bird_pidfile),
    pidfile=_D.bird_pidfile, reload="birdc", ready=_D.bird_socket, dirs=("/run/bird",)))
register_service(Service(
    name="healthd", unit="anycastlb-healthd",
    command=("--config", "/etc/anycastlb/healthd.json"), paths=("/etc/anycastlb/healthd.json",),
    pidfile=_D.healthd_pidfile, reload="SIGHUP", daemonizes=False,
    dirs=("/run/anycastlb", "/var/lib/anycastlb", "/var/log/anycastlb"),
    log="/var/log/anycastlb/healthd.log"))

#: ``birdc configure`` output that means success (anything else is a failure).
BIRD_OK = ("Reconfigured", "Reconfiguration in progress", "Nothing to do")
START_TIMEOUT_S = 10.0
#: A reload's wait for the new worker. The master re-parses the whole config on SIGUSR2: 3.8-11.4 s
#: at 1,000 services in a lab with load average 30 (0.3 s unloaded); HAProxy's own refusal is seen
#: at once (``failed`` in ``show proc``), so this only bounds a hung reload.
RELOAD_TIMEOUT_S = 60.0
#: The binds of the config HAProxy's master loaded at its last reload by anycastlb, keyed by its
#: pid and reload count (a restart or a reload by someone else makes it void).
BINDS_RECORD = "/run/haproxy/anycastlb-binds.json"


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def unix_query(path: str, command: str, timeout: float = 2.0) -> str:
    """Send ``command`` to a HAProxy CLI socket and read the answer to the end."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # the master CLI answers once it sees the end of input
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def _first_line(text: str) -> str:
    """The first non-empty line of a CLI answer (a refusal's reason; never a payload)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no answer)")[:200]


@dataclass(frozen=True)
class ProcInfo:
    """The HAProxy master's ``show proc``: its reload and failure counts, its workers."""

    master_pid: int
    reloads: int
    failed: int
    workers: tuple[tuple[int, int], ...]  # current workers: (pid, reloads survived)
    old_workers: tuple[int, ...]


def parse_show_proc(text: str) -> ProcInfo:
    """Parse HAProxy 2.6 master CLI ``show proc`` output."""
    master = reloads = failed = -1
    workers: list[tuple[int, int]] = []
    old: list[int] = []
    section = "master"
    for line in text.splitlines():
        if line.startswith("#"):
            low = line.lower()
            if "old workers" in low:
                section = "old"
            elif "workers" in low:
                section = "workers"
            elif "programs" in low:
                section = "programs"
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        if fields[1] == "master":
            master, reloads = int(fields[0]), int(fields[2])
            m = re.search(r"failed:\s*(\d+)", line)
            failed = int(m.group(1)) if m else 0
        elif fields[1] == "worker" and section == "workers":
            workers.append((int(fields[0]), int(fields[2])))
        elif fields[1] == "worker" and section == "old":
            old.append(int(fields[0]))
    if master < 0:
        raise ValueError(f"not a show proc answer: {text.strip()[:200]!r}")
    return ProcInfo(master, reloads, failed, tuple(workers), tuple(old))


@dataclass(frozen=True)
class HaproxyConfigFacts:
    """What a reload needs to know of a HAProxy config, read in one pass (:func:`config_facts`)."""

    #: The address list of each ``bind`` line as written (``192.0.2.10:443,[2001:db8::10]:443``).
    bind_lines: tuple[str, ...]
    #: ``(backend, server)`` of every server that tracks another's check.
    tracking: frozenset[tuple[str, str]]

    @property
    def binds(self) -> set[tuple[str, int]]:
        """``(address, port)`` of every address of every bind line (a bind line may list several,
        comma-separated: ``bind 192.0.2.10:443,[2001:db8::10]:443 ...``)."""
        return bind_line_addresses(self.bind_lines)


def config_facts(config: str) -> HaproxyConfigFacts:
    """The bind lines and tracking servers of a HAProxy config, in one pass over its lines
    (a reload at 1,000 services reads 15,000 lines: 3.5 ms, where two regular-expression scans and the
    recorded address list took 12)."""
    binds: list[str] = []
    tracking: set[tuple[str, str]] = set()
    backend = ""
    for line in config.split("\n"):
        if line.startswith("backend"):
            f = line.split()
            if f[0] == "backend" and len(f) > 1:
                backend = f[1]
        elif "bind" in line or "track" in line:   # most lines have neither: not split
            f = line.split()
            if f and f[0] == "bind" and len(f) > 1:
                binds.append(f[1])
            elif f and f[0] == "server" and line[:1] in " \t" and len(f) > 3 and "track" in f[2:-1]:
                tracking.add((backend, f[1]))
    return HaproxyConfigFacts(tuple(binds), frozenset(tracking))


def bind_line_addresses(lines: Sequence[str]) -> set[tuple[str, int]]:
    """``(address, port)`` of every address of bind lines' address lists (comma-separated)."""
    out: set[tuple[str, int]] = set()
    for text in lines:
        for one in text.split(","):
            a = re.fullmatch(r"(?:\[([^\]]+)\]|([^\[\]]*?)):(\d+)", one)
            if a:
                out.add((a.group(1) or a.group(2) or "*", int(a.group(3))))
    return out


def without_servers(state: str, servers: AbstractSet[tuple[str, str]]) -> str:
    """A ``show servers state`` dump without the lines of ``servers`` (``be_name`` and ``srv_name``
    are its 2nd and 4th fields)."""
    if not servers:
        return state
    keep = []
    for line in state.splitlines(keepends=True):
        f = line.split(None, 4)
        if len(f) > 4 and not line.startswith("#") and (f[1], f[3]) in servers:
            continue
        keep.append(line)
    return "".join(keep)


def foreign_listeners(ss_output: str, binds: set[tuple[str, int]]) -> list[tuple[str, int, str]]:
    """Binds held by a listening socket that is not HAProxy's, from ``ss -Htlnp`` output."""
    wild = {"*", "0.0.0.0", "::"}
    found = []
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[3]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]").split("%")[0]
        if not port.isdigit():
            continue
        owner = " ".join(fields[5:]) if len(fields) > 5 else "an unknown process"
        if "haproxy" in owner:
            continue
        for baddr, bport in binds:
            if bport == int(port) and (addr == baddr or addr in wild or baddr in wild):
                found.append((baddr, bport, owner))
    return found


#: Our nftables table (anycastlb/render/nftables.py) and the table that keeps its ``pools`` chain
#: from before a load until HAProxy has reloaded (:meth:`ServiceControl._load_nftables`).
NFT_TABLE = "anycastlb"
PREVIOUS_POOLS = "anycastlb_prev"


def previous_pool_rules(listing: str) -> list[str]:
    """The rules of ``nft list chain inet anycastlb pools``, one string each (a rule listed over several
    lines is joined); the chain's own ``type ... hook`` line and the braces around it are left out."""
    rules: list[str] = []
    depth, current, inside = 0, "", False
    for line in listing.splitlines():
        text = line.strip()
        if not inside:
            inside = text.startswith("type filter hook prerouting")
            continue
        if depth == 0 and text == "}":
            break
        current = f"{current} {text}" if current else text
        depth += text.count("{") - text.count("}")
        if depth == 0 and current:
            rules.append(current)
            current = ""
    return rules


def bird_configure_ok(output: str) -> bool:
    """Whether ``birdc configure`` output reports success."""
    return any(ok in output for ok in BIRD_OK)


class ServiceControl:
    """Start / reload / stop the daemons anycastlb manages, through their systemd units.

    ``ServiceControl("direct")`` (or detection on a host without systemd) builds the
    namespace lab's :class:`anycastlb.lab.direct.DirectControl` instead, which starts the
    daemons itself.

    ``root`` places every path (configs, pidfiles, sockets) under a directory
    (``/`` in production); ``prefix`` is prepended to every command, e.g.
    ``["ip", "netns", "exec", "lab-lb1"]`` to run a node's daemons in its
    network namespace. ``run`` is the command runner (tests replace it).
    """

    def __new__(cls, mode: str | None = None, *args: Any, **kwargs: Any) -> "ServiceControl":
        """Hosts without systemd (the namespace lab) get :class:`anycastlb.lab.direct.DirectControl`."""
        if cls is ServiceControl and detect_mode(mode) == "direct":
            from .lab.direct import DirectControl
            return super().__new__(DirectControl)
        return super().__new__(cls)

    def __init__(self, mode: str | None = None, root: str = "/", prefix: Sequence[str] = (),
                 run: Callable[..., subprocess.CompletedProcess[str]] | None = None):
        self.mode = detect_mode(mode)
        #: Pidfiles and sockets of this init mode (the one table of them: anycastlb/paths.py).
        self.paths: DaemonPaths = for_mode(self.mode)
        self.root = root
        self.prefix = list(prefix)
        self._run = run or self._subprocess

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _subprocess(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def _service(self, daemon: str) -> Service:
        try:
            return services()[daemon]
        except KeyError:
            raise ServiceError(f"unknown daemon {daemon!r} (known: {', '.join(sorted(SERVICES))})") from None

    def path(self, path: str) -> str:
        """A production path placed under this control's root."""
        return under(self.root, path)

    def argv(self, daemon: str) -> list[str]:
        """The direct-mode command line of ``daemon`` (root and prefix applied)."""
        svc = self._service(daemon)
        argv = [self.path(a) if a in svc.paths else a for a in svc.command]
        if daemon == "healthd":
            argv = list(_healthd_argv()) + argv
        return self.prefix + argv

    def systemctl(self, verb: str, daemon: str) -> list[str]:
        """The systemd-mode command for ``verb`` on ``daemon``."""
        return ["systemctl", verb, self._service(daemon).unit]

    def pid(self, daemon: str) -> int | None:
        """The daemon's process if it runs: the unit's MainPID."""
        proc = self._run(["systemctl", "show", "-p", "MainPID", "--value", self._service(daemon).unit])
        text = (proc.stdout or "").strip()
        return int(text) if proc.returncode == 0 and text.isdigit() and int(text) > 0 else None

    def _check(self, argv: list[str], what: str) -> str:
        proc = self._run(argv)
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        if proc.returncode != 0:
            raise ServiceError(f"{what} failed ({shlex.join(argv)}): {out or f'exit {proc.returncode}'}")
        return out

    # ---------------------------------------------------------------- interface
    def _oneshot(self, daemon: str) -> str:
        argv = self.argv(daemon)
        if daemon == "nftables" and argv[-2:-1] == ["-f"]:
            return self._load_nftables(argv)
        self._check(argv, f"load {daemon}")
        return f"{daemon} loaded ({shlex.join(argv)})"

    def _load_nftables(self, argv: list[str]) -> str:
        """Load our ruleset, keeping the pools chain it replaces in :data:`PREVIOUS_POOLS` until HAProxy
        runs the new config (:meth:`drop_previous_pools`); both go in one ``nft -f`` transaction.

        The running HAProxy listens as the old chain says: a VIP leaving a pool (for a frontend of its
        own or another pool) must reach the old pool's listener until the reload. The kept chain runs
        first (priority mangle - 1); a rule whose listener is gone does nothing."""
        listed = self._run(self.prefix + ["nft", "list", "chain", "inet", NFT_TABLE, "pools"])
        rules = previous_pool_rules(listed.stdout or "") if listed.returncode == 0 else []
        text = f"table inet {PREVIOUS_POOLS} {{}}\ndelete table inet {PREVIOUS_POOLS}\n"
        if rules:
            text += (f"table inet {PREVIOUS_POOLS} {{\n\tchain pools {{\n"
                     f"\t\ttype filter hook prerouting priority mangle - 1; policy accept;\n"
                     + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n}\n")
        text += f"include {json.dumps(argv[-1])}\n"
        tmp = self.path(f"/run/anycastlb-nftables-{os.getpid()}.nft")
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            self._check(argv[:-1] + [tmp], "load nftables")
        finally:
            os.remove(tmp)
        kept = f"; the previous pools chain kept until HAProxy reloads ({len(rules)} rules)" if rules else ""
        return f"nftables loaded ({shlex.join(argv)}){kept}"

    def drop_previous_pools(self) -> str:
        """Delete the pools chain :meth:`_load_nftables` kept, once HAProxy runs the config that goes
        with the new one; "" when there is none (or no nft on the host)."""
        if not shutil.which("nft"):
            return ""
        argv = self.prefix + ["nft", f"delete table inet {PREVIOUS_POOLS}"]
        proc = self._run(argv)   # one command on every reload: no listing first
        if proc.returncode == 0:
            return "previous pools chain dropped"
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        if "No such file or directory" in out:   # none was kept
            return ""
        raise ServiceError(f"drop the previous pools chain failed ({shlex.join(argv)}): {out or f'exit {proc.returncode}'}")

    def running(self, daemon: str) -> bool:
        """Whether the daemon runs (for a oneshot: whether its config is loaded)."""
        svc = self._service(daemon)
        if svc.oneshot:
            return self._run(self.prefix + list(svc.probe)).returncode == 0
        return self._run(self.systemctl("is-active", daemon) + ["--quiet"]).returncode == 0

    def start(self, daemon: str) -> str:
        """Start the daemon (no-op if it runs); raise :class:`ServiceError` if it does not come up."""
        if self._service(daemon).oneshot:
            return self._oneshot(daemon)
        self._check(self.systemctl("start", daemon), f"start {daemon}")
        return f"{daemon} started (systemd)"

    def reload_or_start(self, daemon: str) -> str:
        """Reload a running daemon (confirmed) or start a stopped one."""
        if self._service(daemon).oneshot:
            return self._oneshot(daemon)
        svc = self._service(daemon)
        if not self.running(daemon):
            out = self.start(daemon)
        elif svc.reload == "haproxy":
            out = self._reload_haproxy()
        elif svc.reload == "birdc":
            return self._reload_bird()
        else:
            return self._signal_reload(daemon)
        # HAProxy runs the config that goes with the loaded nftables: the kept pools chain can go
        dropped = self.drop_previous_pools() if svc.reload == "haproxy" else ""
        return f"{out}; {dropped}" if dropped else out

    def _signal_reload(self, daemon: str) -> str:
        """``systemctl reload``: the unit's ExecReload (its signal, or its own checked reload)."""
        self._check(self.systemctl("reload", daemon), f"reload {daemon}")
        return f"{daemon} reloaded (systemctl reload {self._service(daemon).unit})"

    def stop(self, daemon: str) -> str:
        """Stop the daemon and wait for it."""
        if self._service(daemon).oneshot:
            return f"{daemon} has no process to stop"
        self._check(self.systemctl("stop", daemon), f"stop {daemon}")
        return f"{daemon} stopped (systemd)"

    def unload(self, daemon: str) -> str:
        """A oneshot's stop: take its config out of the kernel (nftables: our table); "" if none is loaded."""
        svc = self._service(daemon)
        if not svc.unload or not self.running(daemon):
            return ""
        argv = self.prefix + list(svc.unload)
        self._check(argv, f"unload {daemon}")
        return f"{daemon} unloaded ({shlex.join(argv)})"

    def disable(self, daemon: str) -> str:
        """Keep the daemon from starting at boot (``systemctl disable`` of its unit); "" when it was not
        enabled, has no unit of its own, or the host has no systemd (the namespace lab)."""
        svc = self._service(daemon)
        if self.mode != "systemd" or not svc.unit:
            return ""
        unit = svc.unit + ".service"
        if self._run(["systemctl", "is-enabled", "--quiet", unit]).returncode != 0:
            return ""
        self._check(["systemctl", "disable", unit], f"disable {daemon}")
        return f"{unit} disabled"

    # ---------------------------------------------------------------- reloads
    def _master_proc(self) -> ProcInfo:
        return parse_show_proc(unix_query(self.path(self.paths.haproxy_master_socket), "show proc"))

    def _haproxy_preflight(self, running: ProcInfo, facts: HaproxyConfigFacts | None) -> tuple[str, ...]:
        """Refuse a reload whose binds another program holds; return the config's bind lines.

        HAProxy 2.6 answers such a reload by pausing the running workers' listeners
        while it retries the bind, then gives up: measured here, about 2 s of refused
        connections. ``haproxy -c`` does not bind, so this is checked before SIGUSR2.
        Only a bind the running master does not hold yet can fail (it hands its own
        sockets to the new one): when the bind lines it loaded are on record (:data:`BINDS_RECORD`,
        written at each confirmed reload of this master), only new addresses are looked up;
        none at all, and nothing parsed, when the bind lines are the same (``ss -p`` reads
        every process's descriptors: 40 ms with 3,000 listeners).
        """
        if facts is None:
            return ()
        recorded = self._recorded_bind_lines(running)
        if recorded is not None and sorted(recorded) == sorted(facts.bind_lines):
            return facts.bind_lines
        new = facts.binds - (bind_line_addresses(recorded) if recorded else set())
        if not new:
            return facts.bind_lines
        proc = self._run(self.prefix + ["ss", "-Htlnp"])
        if proc.returncode != 0:
            return facts.bind_lines
        for addr, port, owner in foreign_listeners(proc.stdout, new):
            raise ServiceError(f"haproxy reload not attempted: {addr}:{port} is already in use by {owner} "
                               "(a reload that cannot bind would pause the running listeners)")
        return facts.bind_lines

    def _recorded_bind_lines(self, running: ProcInfo) -> tuple[str, ...] | None:
        """The bind lines the running master loaded, if this master's current generation is on record."""
        try:
            with open(self.path(BINDS_RECORD), encoding="utf-8") as fh:
                rec = json.load(fh)
            if (rec["master"], rec["reloads"]) == (running.master_pid, running.reloads):
                return tuple(str(line) for line in rec["bind_lines"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _record_binds(self, now: ProcInfo, bind_lines: Sequence[str]) -> None:
        path = self.path(BINDS_RECORD)
        try:
            with open(f"{path}.tmp", "w", encoding="utf-8") as fh:
                json.dump({"master": now.master_pid, "reloads": now.reloads, "bind_lines": list(bind_lines)}, fh)
            os.replace(f"{path}.tmp", path)
        except OSError:
            pass

    def _reload_haproxy(self) -> str:
        """Save server states, send SIGUSR2 to the master, confirm a new worker took the config.

        Under systemd too the signal goes to the master itself: ``systemctl reload haproxy``
        (Debian's ExecReload) would run ``haproxy -c`` first, a third parse of a config that
        anycastlb checked before it replaced the live one (:func:`anycastlb.apply.apply_daemon`);
        the master's own parse at reload refuses a bad config and keeps the running workers.
        The master CLI answers only once the new master has forked its worker, so the first
        ``show proc`` after the signal waits for the reload to finish; the poll is short."""
        before = self._master_proc()
        try:
            with open(self.path("/etc/haproxy/haproxy.cfg"), encoding="utf-8") as fh:
                config: str | None = fh.read()
        except OSError:
            config = None
        facts = config_facts(config) if config is not None else None
        binds = self._haproxy_preflight(before, facts)
        saved = self.save_haproxy_state(facts.tracking if facts else frozenset())
        os.kill(before.master_pid, signal.SIGUSR2)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            time.sleep(0.005)
            try:
                now = self._master_proc()
            except (OSError, ValueError) as exc:  # the master re-executes: its socket is briefly gone
                last = str(exc)
                continue
            if now.failed > before.failed:
                raise ServiceError(f"haproxy refused the new config at reload (master {before.master_pid}: failed "
                                   f"reloads {before.failed} -> {now.failed}); the running worker(s) "
                                   f"{', '.join(str(p) for p, _ in now.workers)} keep serving the old one")
            if now.reloads > before.reloads:
                new = [pid for pid, _ in now.workers if pid not in {p for p, _ in before.workers}]
                if new:
                    self._record_binds(now, binds)
                    return (f"haproxy reloaded: new worker {new[0]}, {len(now.old_workers)} old worker(s) "
                            f"finishing; {saved}")
                last = "master reloaded, no new worker yet"
        raise ServiceError(f"haproxy reload not confirmed within {RELOAD_TIMEOUT_S:.0f} s ({last})")

    def set_ssl_cert(self, crt: str, pem: str) -> str:
        """Swap the certificate HAProxy loaded from ``crt`` for ``pem`` through the runtime API, with no
        reload: ``set ssl cert`` then ``commit ssl cert``; any refusal aborts the transaction and raises."""
        from .certs import runtime_payload
        sock = self.path(self.paths.haproxy_admin_socket)
        try:
            out = unix_query(sock, f"set ssl cert {crt} <<\n{runtime_payload(pem)}\n", timeout=10.0)
            if "Transaction created" not in out and "Transaction updated" not in out:
                raise ServiceError(f"set ssl cert {crt}: {_first_line(out)}")
            out = unix_query(sock, f"commit ssl cert {crt}", timeout=10.0)
            if "Success!" not in out:
                raise ServiceError(f"commit ssl cert {crt}: {_first_line(out)}")
        except (OSError, ServiceError) as exc:
            try:
                unix_query(sock, f"abort ssl cert {crt}")
            except OSError:
                pass
            raise ServiceError(str(exc) if isinstance(exc, ServiceError) else f"runtime API {sock}: {exc}") from None
        return f"{os.path.basename(crt)} swapped in (set/commit ssl cert)"

    def haproxy_workers(self) -> tuple[int, ...]:
        """The current HAProxy worker PIDs (from the master's ``show proc``)."""
        return tuple(pid for pid, _ in self._master_proc().workers)

    def save_haproxy_state(self, tracking: AbstractSet[tuple[str, str]] = frozenset()) -> str:
        """Dump ``show servers state`` to the server-state file (read by the next worker), without the
        servers that track another's check in the config about to be loaded (``tracking``): a tracking
        server's saved UP or DOWN would override the state of the check it tracks (measured with HAProxy
        2.6: a tracking server loaded DOWN stayed DOWN beside its UP check), while without a line it
        takes that check's loaded state."""
        path = self.path("/var/lib/haproxy/server-state")
        try:
            text = unix_query(self.path(self.paths.haproxy_admin_socket), "show servers state")
        except OSError as exc:
            return f"server states not saved ({exc})"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(without_servers(text, tracking))
        os.replace(tmp, path)
        return "server states saved"

    def _reload_bird(self) -> str:
        # Also under systemd: Debian's ExecReload is this very command, but `systemctl reload bird`
        # exits 0 on a refused config; its output is what says whether BIRD took it.
        argv = self.prefix + ["birdc", "-s", self.path(self.paths.bird_socket), "configure"]
        proc = self._run(argv)
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        if not bird_configure_ok(out):
            raise ServiceError(f"bird refused the new config and keeps the old one ({shlex.join(argv)}): {out}")
        return "bird " + next(ok for ok in BIRD_OK if ok in out).lower()

    # ---------------------------------------------------------------- host state
    def converge(self, daemon: str, model: dict[str, Any], test: bool = False) -> dict[str, Any]:
        """Host state that goes with a daemon's step and is not a file: the VIPs on ``lo`` (``healthd``)."""
        if daemon != "healthd":
            return {}
        return sync_vips(model, test=test, run=self._run, prefix=self.prefix)


# -------------------------------------------------------------------- VIPs on lo


def vip_plan(model: dict[str, Any], present: Sequence[str]) -> tuple[list[str], list[str]]:
    """(addresses to add, addresses to remove) on ``lo``; ``present`` are ``addr/len`` strings.

    Only host addresses inside the node's ``vip_pools`` are ever removed. Each address is
    parsed once: linear in the VIPs (a node of 1,000 services has thousands).
    """
    bgp = model.get("bgp") or {}
    wanted = [f"{v['address']}/{ipaddress.ip_address(v['address']).max_prefixlen}" for v in bgp.get("vips", [])]
    pools = [ipaddress.ip_network(p) for fam in (bgp.get("vip_pools") or {}).values() for p in fam]
    keep = {str(ipaddress.ip_interface(w)) for w in wanted}
    have = {str(iface): iface for iface in map(ipaddress.ip_interface, present)}
    add = [w for w in wanted if str(ipaddress.ip_interface(w)) not in have]
    remove = []
    for p in sorted(have):
        iface = have[p]
        if iface.network.prefixlen != iface.max_prefixlen or p in keep:
            continue
        if any(iface.ip.version == net.version and iface.ip in net for net in pools):
            remove.append(p)
    return add, remove


def lo_addresses(run: Callable[..., subprocess.CompletedProcess[str]], prefix: Sequence[str] = ()) -> list[str]:
    """Addresses on ``lo`` as ``addr/len``."""
    proc = run(list(prefix) + ["ip", "-j", "addr", "show", "dev", "lo"])
    if proc.returncode != 0:
        raise ServiceError(f"ip addr show dev lo: {proc.stderr}")
    out = []
    for link in json.loads(proc.stdout or "[]"):
        for a in link.get("addr_info", []):
            out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def sync_vips(model: dict[str, Any], test: bool = False,
              run: Callable[..., subprocess.CompletedProcess[str]] | None = None,
              prefix: Sequence[str] = ()) -> dict[str, Any]:
    """Put every VIP of the node on ``lo`` (``ip addr replace``), remove VIPs it no longer has.

    Returns ``{"vips": {"added": [...], "removed": [...]}}`` or ``{}`` when nothing changes;
    with ``test`` nothing is done.
    """
    run = run or ServiceControl._subprocess
    add, remove = vip_plan(model, lo_addresses(run, prefix))
    if not add and not remove:
        return {}
    if not test:
        for a in add:
            proc = run(list(prefix) + ["ip", "addr", "replace", a, "dev", "lo"])
            if proc.returncode != 0:
                raise ServiceError(f"ip addr replace {a} dev lo: {proc.stderr.strip()}")
        for r in remove:
            proc = run(list(prefix) + ["ip", "addr", "del", r, "dev", "lo"])
            if proc.returncode != 0:
                raise ServiceError(f"ip addr del {r} dev lo: {proc.stderr.strip()}")
    return {"vips": {"added": add, "removed": remove}}


def drop_vips(prefixes: Sequence[str], test: bool = False,
              run: Callable[..., subprocess.CompletedProcess[str]] | None = None,
              prefix: Sequence[str] = ()) -> list[str]:
    """Remove from ``lo`` those of ``prefixes`` (host prefixes, ``addr/len``) that are on it; → what was
    (with ``test``: would be) removed. For a node that stops announcing: its health agent's VIPs."""
    run = run or ServiceControl._subprocess
    hosts = {str(ipaddress.ip_interface(p)) for p in prefixes
             if ipaddress.ip_interface(p).network.prefixlen == ipaddress.ip_interface(p).max_prefixlen}
    gone = [p for p in sorted({str(ipaddress.ip_interface(a)) for a in lo_addresses(run, prefix)}) if p in hosts]
    for p in [] if test else gone:
        proc = run(list(prefix) + ["ip", "addr", "del", p, "dev", "lo"])
        if proc.returncode != 0:
            raise ServiceError(f"ip addr del {p} dev lo: {proc.stderr.strip()}")
    return gone
