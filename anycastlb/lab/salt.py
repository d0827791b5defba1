"""Salt in the lab: a salt-master in the node with role ``salt-master``, a minion in every node.

Both run from the bin dir of the Python running the lab (the project venv), with their
ordinary paths (``/etc/salt``, ``/var/cache/salt``, ``/run/salt``, ``/var/log/salt``)
which are private to each node. Custom modules load straight from the repo through
``module_dirs`` (the repo's ``_modules``, ``_states``, ``_pillar``), so no
``saltutil.sync_all`` is needed before the first highstate.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import acme_ca
from .catalog import load

if TYPE_CHECKING:
    from .core import Lab

BIN = Path(sys.executable).parent
#: The Python of this venv, which every lab node runs anycastlb and the lab clients with.
PYTHON = str(BIN / "python")


class SaltBootstrapError(RuntimeError):
    """The master or a minion did not come up in time."""


_MASTERS: dict[tuple[str, int, int], list[str]] = {}


def master_node(lab: "Lab") -> str:
    """The node with role ``salt-master`` (exactly one is expected).

    Every Salt command of the lab asks; the answer is kept per catalog version (path, newest
    mtime and total size of its files): loading a 1,000-service catalog takes about a second.
    """
    path = Path(lab.catalog).resolve()
    stats = [f.stat() for f in ([path] if path.is_file() else sorted(path.rglob("*")))]
    key = (str(path), max((st.st_mtime_ns for st in stats), default=0), sum(st.st_size for st in stats))
    if key not in _MASTERS:
        _MASTERS[key] = [h.name for h in load(lab.catalog).with_role("salt-master")]
    masters = _MASTERS[key]
    if len(masters) != 1:
        raise SaltBootstrapError(f"the catalog needs exactly one node with role salt-master, has {masters}")
    return masters[0]


def master_config(lab: "Lab", address: str) -> dict:
    """The lab's master settings (written to ``/etc/salt/master.d/lab.conf`` in the master node)."""
    return {
        "interface": address,
        "ipv6": False,
        "auto_accept": True,
        # the anycastlb states, and a site's top file as docs/install.md sets it up
        "file_roots": {"base": [str(lab.repo / "salt"), str(lab.repo / "docs" / "examples" / "salt")]},
        # The lab's own site settings (packages are on the host already); see fleet.lab_pillar.
        "pillar_roots": {"base": [str(lab.statedir / "pillar")]},
        "module_dirs": [str(lab.repo)],
        # With module_dirs at the repo root Salt would look for ext_pillars in <repo>/pillar.
        "pillar_dirs": [str(lab.repo / "_pillar")],
        "ext_pillar": [{"anycastlb": {"catalog": str(lab.catalog),
                                      "secrets": str(lab.statedir / "secrets.yaml"),
                                      **acme_ca.master_options(lab)}}],   # the lab's CA, if wired
        "worker_threads": 3,
        "enable_gpu_grains": False,
        "log_level_logfile": "info",
        "keep_jobs_seconds": 3600,
    }


def minion_config(lab: "Lab", node: str, master: str) -> dict:
    """A lab minion's settings (``/etc/salt/minion.d/lab.conf``), tuned for a fast start."""
    return {
        "id": node,
        "master": master,
        "module_dirs": [str(lab.repo)],
        "acceptance_wait_time": 1,
        "acceptance_wait_time_max": 2,
        "random_reauth_delay": 0,
        "recon_default": 200,
        "recon_max": 1000,
        "recon_randomize": False,
        # The first firewall load meets the minion's established publish connection mid-stream:
        # conntrack sees the master's packets as NEW and the input policy drops them until the
        # minion sends something. Short TCP keepalives make it send within seconds (the default
        # idle time is 300 s); production minions benefit from the same settings (docs/salt.md).
        "tcp_keepalive": True,
        "tcp_keepalive_idle": 5,
        "tcp_keepalive_cnt": 3,
        "tcp_keepalive_intvl": 5,
        "auth_tries": 30,
        "enable_fqdns_grains": False,
        "enable_gpu_grains": False,
        "grains_cache": True,
        "mine_enabled": False,
        "multiprocessing": False,
        "log_level_logfile": "info",
    }


def _write_conf(lab: "Lab", node: str, path: str, conf: dict) -> None:
    lab.write_file(node, path, "# anycastlb lab: generated\n" + yaml.safe_dump(conf, default_flow_style=False))


def salt_cmd(lab: "Lab", *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``salt ARGS`` on the master node; return (rc, stdout, stderr)."""
    r = lab.exec(master_node(lab), [str(BIN / "salt"), *args], timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def ping(lab: "Lab", timeout: int = 5) -> set[str]:
    """Minions answering ``test.ping`` right now."""
    try:
        rc, out, _ = salt_cmd(lab, "*", "test.ping", "--out=json", "--static", f"--timeout={timeout}",
                              timeout=timeout + 30)
    except subprocess.TimeoutExpired:  # a master too busy to answer: nobody answered
        return set()
    try:
        data = json.loads(out) if out.strip() else {}
    except ValueError:
        return set()
    return {m for m, v in data.items() if v is True}


def _listening(lab: "Lab", node: str, port: int) -> bool:
    r = lab.exec(node, ["ss", "-Hltn", f"sport = :{port}"], timeout=10)
    return bool(r.stdout.strip())


def _minion_ready(lab: "Lab", node: str) -> bool:
    """True once the minion's own log (host-side view of its /var/log/salt) says it is ready."""
    try:
        log = lab.node_path(node, "/var/log/salt/minion")
        return b"Minion is ready to receive requests" in log.read_bytes()
    except OSError:
        return False


#: The argv of the lab's Salt daemons (the venv's; Salt is not a Debian package here).
DAEMONS = {"salt-master": [str(BIN / "salt-master"), "-l", "warning"],
           "salt-minion": [str(BIN / "salt-minion"), "-l", "warning", "--disable-keepalive"]}


def salt_unit(name: str) -> str:
    """A booted node's unit for the venv's ``salt-master`` or ``salt-minion`` (enabled: back after a reboot)."""
    what = "master" if name == "salt-master" else "minion"
    return (f"# anycastlb lab: the venv's Salt {what} (production hosts use the salt package's unit)\n"
            f"[Unit]\nDescription=The Salt {what.capitalize()} (anycastlb lab)\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            f"[Service]\nType=simple\nExecStart={' '.join(DAEMONS[name])}\n"
            f"Environment=PATH={BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            "KillMode=process\nRestart=on-failure\nRestartSec=1s\nLimitNOFILE=100000\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


def start_daemon(lab: "Lab", node: str, name: str) -> None:
    """Start ``salt-master``/``salt-minion`` in ``node``: a unit enabled and started (booted nodes),
    else a process of the lab's registry."""
    if lab.init == "systemd":
        lab.write_file(node, f"/etc/systemd/system/{name}.service", salt_unit(name))
        r = lab.exec(node, ["systemctl", "enable", "--now", f"{name}.service"], timeout=60)
        if r.returncode != 0:
            raise SaltBootstrapError(f"{node}: systemctl enable --now {name}: {r.stderr.strip()}")
        return
    lab.spawn(node, DAEMONS[name], name)


def start_salt(lab: "Lab", wait: float = 150.0) -> float:
    """Start the master and every minion, wait until all answer ``test.ping``; return the seconds it took.

    The master is started first and the minions once it listens on 4506: minions that
    start together with the master send their first key request before it listens and
    then sit out a whole request timeout, which costs more than the stagger.
    """
    t0 = time.monotonic()
    deadline = t0 + wait
    master = master_node(lab)
    maddr = lab.host(master).address
    assert maddr, f"{master} has no IPv4 address"
    _write_conf(lab, master, "/etc/salt/master.d/lab.conf", master_config(lab, maddr))
    for n in lab.nodes:
        _write_conf(lab, n, "/etc/salt/minion.d/lab.conf", minion_config(lab, n, maddr))
    start_daemon(lab, master, "salt-master")
    while not _listening(lab, master, 4506):
        if time.monotonic() > deadline:
            raise SaltBootstrapError(f"salt-master not listening after {wait}s "
                                     f"(see {lab.log_path(master, 'salt-master')})")
        time.sleep(0.2)
    for n in lab.nodes:
        start_daemon(lab, n, "salt-minion")
    want = set(lab.nodes)
    while not all(_minion_ready(lab, n) for n in want) and time.monotonic() < deadline:
        time.sleep(0.2)
    got: set[str] = set()
    while time.monotonic() < deadline:
        got = ping(lab)
        if want <= got:
            secs = round(time.monotonic() - t0, 1)
            lab.meta["salt_seconds"] = secs
            lab.save()
            return secs
        time.sleep(1.0)
    raise SaltBootstrapError(f"minions not answering after {wait}s: {sorted(want - got)} "
                             f"(logs in {lab.statedir / 'logs'} and <node>/log/salt/)")
