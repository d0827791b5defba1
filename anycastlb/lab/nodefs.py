"""Per-node filesystems: a persistent mount (and UTS) namespace for every catalog node.

Each node sees ordinary production paths, yet no two nodes share a writable file:

* overlayfs (lower = the host's directory, upper = the node's own) on ``/etc``,
  ``/var/lib``, ``/var/cache``, ``/var/spool`` and ``/var/www``: every node starts from
  the host's packaged trees (apache2, icinga2, haproxy, bird, ssh ...) and its writes
  (``/etc/haproxy/…``, ``/etc/nftables.conf``, ``/var/lib/icinga2/…``) stay its own;
* fresh bind-mounted directories from the state dir on ``/run`` (with the
  subdirectories the daemons expect), ``/var/log`` (the host's directory skeleton, no
  files) and ``/var/cache/salt`` (so no host Salt cache leaks in);
* a fresh sysfs on ``/sys`` (matching the node's network namespace) and its own hostname.

The namespaces live on as nsfs bind mounts ``<statedir>/ns/<node>.mnt|.uts`` on a
private bind mount of ``<statedir>/ns``; everything of a node is under
``<statedir>/nodes/<node>/`` and visible from the host (e.g. ``…/run/bird/bird.ctl``).
"""
from __future__ import annotations

import grp
import os
import pwd
import shlex
import subprocess
import sys
from pathlib import Path

OVERLAYS = ("/etc", "/var/lib", "/var/cache", "/var/spool", "/var/www")
BINDS = {"/run": "run", "/var/log": "log", "/var/cache/salt": "salt-cache"}
# /run subdirectories and their owner, group, mode (as the Debian packages create them).
RUN_DIRS: dict[str, tuple[str, str, int]] = {
    "haproxy": ("haproxy", "haproxy", 0o2775),
    "bird": ("bird", "bird", 0o775),
    "apache2": ("root", "root", 0o755),
    "icinga2": ("nagios", "nagios", 0o755),
    "icinga2/cmd": ("nagios", "www-data", 0o2750),
    "salt": ("root", "root", 0o755),
    "sshd": ("root", "root", 0o755),
    "lock": ("root", "root", 0o1777),
    "anycastlb": ("root", "root", 0o755),
    "nftables": ("root", "root", 0o755),
}
# Directories created inside the node (in its overlays) before the binds.
MKDIRS = ("/var/cache/salt", "/var/lib/anycastlb", "/etc/anycastlb", "/etc/nftables.d", "/etc/salt")


class NodeFsError(RuntimeError):
    """Setting up a node's mount namespace failed."""


def _ids(user: str, group: str) -> tuple[int, int]:
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return 0, 0


def _mkdir(path: Path, owner: str = "root", group: str = "root", mode: int = 0o755) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *_ids(owner, group))
    os.chmod(path, mode)


def _skeleton(src: Path, dst: Path) -> None:
    """Copy the directory tree of ``src`` into ``dst``: directories only, owners and modes kept."""
    for root, dirs, _files in os.walk(src):
        rel = Path(root).relative_to(src)
        target = dst / rel
        st = os.stat(root)
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


def ns_dir(statedir: Path) -> Path:
    """Where the nsfs files of the lab live."""
    return Path(statedir) / "ns"


def mnt_file(statedir: Path, node: str) -> Path:
    """The persistent mount namespace file of ``node``."""
    return ns_dir(statedir) / f"{node}.mnt"


def uts_file(statedir: Path, node: str) -> Path:
    """The persistent UTS namespace file of ``node``."""
    return ns_dir(statedir) / f"{node}.uts"


def node_dir(statedir: Path, node: str) -> Path:
    """The host-side directory holding everything of ``node``."""
    return Path(statedir) / "nodes" / node


def prepare_ns_dir(statedir: Path) -> None:
    """Make ``<statedir>/ns`` a private bind mount so nsfs files may be bound in it."""
    d = ns_dir(statedir)
    d.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(d):
        _run(["mount", "--bind", str(d), str(d)])
    _run(["mount", "--make-private", str(d)])


def is_mountpoint(path: Path) -> bool:
    """True if ``path`` is a mount point in the host's mount namespace."""
    p = str(Path(path))
    return any(m == p for m in mounts_under(p))


def mounts_under(prefix: str | Path) -> list[str]:
    """Mount points (of this mount namespace) at or below ``prefix``, deepest first."""
    pre = str(Path(prefix))
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == pre or mp.startswith(pre + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def _run(argv: list[str], stdin: str | None = None) -> str:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise NodeFsError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def setup_node(statedir: Path, node: str, netns: str, hosts_text: str) -> None:
    """Create ``node``'s persistent mount and UTS namespaces with its private trees mounted."""
    statedir = Path(statedir)
    nd = node_dir(statedir, node)
    for key in OVERLAYS:
        name = key.strip("/").replace("/", "_")
        (nd / "upper" / name).mkdir(parents=True, exist_ok=True)
        (nd / "work" / name).mkdir(parents=True, exist_ok=True)
    _mkdir(nd / "run")
    for sub, (u, g, mode) in RUN_DIRS.items():
        _mkdir(nd / "run" / sub, u, g, mode)
    _skeleton(Path("/var/log"), nd / "log")
    _mkdir(nd / "log" / "salt")
    _mkdir(nd / "salt-cache")
    (nd / "hosts").write_text(hosts_text)
    mnt, uts = mnt_file(statedir, node), uts_file(statedir, node)
    mnt.touch()
    uts.touch()
    q = shlex.quote
    lines = [
        "set -e",
        # Drop this namespace's copies of other namespaces' handles (keeps them from pinning).
        "umount -l /run/netns 2>/dev/null || true",
        f"umount -l {q(str(ns_dir(statedir)))} 2>/dev/null || true",
        "mount -t sysfs sysfs /sys",
        f"hostname {q(node)}",
    ]
    for key in OVERLAYS:
        name = key.strip("/").replace("/", "_")
        opts = f"lowerdir={key},upperdir={nd / 'upper' / name},workdir={nd / 'work' / name}"
        lines.append(f"mount -t overlay overlay -o {q(opts)} {key}")
    lines.append("mkdir -p " + " ".join(MKDIRS))
    for target, src in BINDS.items():
        lines.append(f"mount --bind {q(str(nd / src))} {target}")
    lines += [
        # Each node gets its own SSH host keys later (ssh-keygen -A), never the host's.
        "rm -f /etc/ssh/ssh_host_*",
        "rm -f /etc/hosts /etc/resolv.conf /etc/hostname /etc/mailname",
        f"cp {q(str(nd / 'hosts'))} /etc/hosts",
        # No nameserver line: lookups go to 127.0.0.1 and fail at once, nothing leaves the lab.
        "printf '# anycastlb lab: no DNS\\noptions timeout:1 attempts:1\\n' > /etc/resolv.conf",
        f"echo {q(node)} > /etc/hostname",
        f"echo {q(node)} > /etc/mailname",
    ]
    argv = ["nsenter", f"--net=/run/netns/{netns}", "unshare", f"--mount={mnt}", f"--uts={uts}",
            "--propagation", "private", "sh", "-c", "\n".join(lines)]
    _run(argv)


def teardown_node(statedir: Path, node: str) -> None:
    """Unmount ``node``'s namespace files (the namespace dies with its last process)."""
    for f in (mnt_file(statedir, node), uts_file(statedir, node)):
        if is_mountpoint(f):
            subprocess.run(["umount", str(f)], capture_output=True)
            if is_mountpoint(f):
                subprocess.run(["umount", "-l", str(f)], capture_output=True)


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for commands run in a node (venv bin first on PATH)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
        "TERM": os.environ.get("TERM", "dumb"),
    }
    env.update(extra or {})
    return env


def nsenter_argv(netns: str, mnt: Path | None, uts: Path | None, argv: list[str], cwd: str = "/") -> list[str]:
    """``nsenter`` prefix that runs ``argv`` in a lab host's namespaces."""
    out = ["nsenter", f"--net=/run/netns/{netns}"]
    if mnt is not None:
        out += [f"--mount={mnt}", f"--uts={uts}"]
    return [*out, f"--wd={cwd}", "--", *argv]
