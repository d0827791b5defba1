"""``anycastlb lab up|down|status|exec|shell``: subcommands for the main CLI (see :func:`register`)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import catalog as cat_mod
from .core import DEFAULT_PREFIX, Lab, load_lab, teardown_on_failure, up_network
from .peer import start_peers
from .responder import start_responder
from .salt import start_salt

DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "examples" / "campus.yaml"


def lab_up(catalog: str | Path, prefix: str = DEFAULT_PREFIX, statedir: str | Path | None = None,
           salt: bool = True, out=sys.stdout) -> Lab:
    """Build network, filesystems, responders, peer BIRD and (optionally) Salt; tear down on failure."""
    t0 = time.monotonic()
    external, ports = cat_mod.stand_ins(catalog)
    lab = up_network(catalog, prefix=prefix, statedir=statedir, external=external)
    with teardown_on_failure(lab):
        print(f"network and node filesystems up in {lab.meta['network_seconds']} s", file=out)
        for host, (tcp, udp) in ports.items():
            start_responder(lab, host, tcp, udp)
            print(f"responder on {host}: tcp {tcp} udp {udp}", file=out)
        for peer, pid in start_peers(lab).items():
            print(f"BIRD on peer {peer}: pid {pid}", file=out)
        if salt:
            secs = start_salt(lab)
            print(f"salt-master and {len(lab.nodes)} minions answering test.ping after {secs} s", file=out)
        lab.meta["up_seconds"] = round(time.monotonic() - t0, 1)
        lab.save()
    print(lab.summary(), file=out)
    print(f"lab up in {lab.meta['up_seconds']} s; `anycastlb lab shell NODE --prefix {prefix}` to enter a node",
          file=out)
    return lab


def _cmd_up(a: argparse.Namespace) -> int:
    lab_up(a.catalog, a.prefix, a.statedir, salt=not a.no_salt)
    return 0


def _cmd_down(a: argparse.Namespace) -> int:
    try:
        lab = load_lab(a.prefix, a.statedir)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 0
    lab.down()
    print(f"lab {a.prefix} down")
    return 0


def _cmd_status(a: argparse.Namespace) -> int:
    print(load_lab(a.prefix, a.statedir).summary())
    return 0


def _cmd_exec(a: argparse.Namespace) -> int:
    lab = load_lab(a.prefix, a.statedir)
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    r = lab.exec(a.node, argv, capture=False, timeout=None, input=None)
    return r.returncode


def _cmd_shell(a: argparse.Namespace) -> int:
    lab = load_lab(a.prefix, a.statedir)
    argv = lab.argv(a.node, ["bash", "-l"])
    os.execvpe(argv[0], argv, {**os.environ, "PS1": f"[lab {a.node}] \\w# "})
    return 0  # not reached


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lab`` with its subcommands to the main CLI's subparsers; each sets ``func``."""
    lab = subparsers.add_parser("lab", help="the whole fleet in network namespaces on this machine")
    sub = lab.add_subparsers(dest="lab_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace/state-dir prefix (default %(default)s)")
        p.add_argument("--statedir", help="state dir (default /var/tmp/<prefix>-lab)")
        return p

    p = common(sub.add_parser("up", help="build the lab (tears down a previous one of the same prefix)"))
    p.add_argument("catalog", nargs="?", default=str(DEFAULT_CATALOG), help="catalog file or directory")
    p.add_argument("--no-salt", action="store_true", help="do not start salt-master and minions")
    p.set_defaults(func=_cmd_up)
    common(sub.add_parser("down", help="tear the lab down")).set_defaults(func=_cmd_down)
    common(sub.add_parser("status", help="show hosts and processes")).set_defaults(func=_cmd_status)
    p = common(sub.add_parser("exec", help="run a command in a lab host"))
    p.add_argument("node")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_exec)
    p = common(sub.add_parser("shell", help="interactive shell in a lab host"))
    p.add_argument("node")
    p.set_defaults(func=_cmd_shell)
    return lab


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m anycastlb.lab.cli``) until the main CLI calls register."""
    ap = argparse.ArgumentParser(prog="anycastlb")
    register(ap.add_subparsers(dest="cmd", required=True))
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
