"""``anycastlb lab up|down|status|deploy|exec|shell``: subcommands for the main CLI (see :func:`register`)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from . import acme_ca
from . import catalog as cat_mod
from .core import (DEFAULT_PREFIX, Lab, LabError, load_lab, missing_prerequisites, teardown_on_failure,
                   up_network)
from .peer import start_peers
from .protocols import protocol_stand_ins, start_kdc, start_resolver
from .responder import start_responder
from .salt import start_salt
from . import fleet as fl
from .fleet import lab_pillar, make_secrets
from ..compiler import compile_catalog

DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "examples" / "campus.yaml"


def lab_up(catalog: str | Path, prefix: str = DEFAULT_PREFIX, statedir: str | Path | None = None,
           salt: bool = True, out=sys.stdout, apply_states: bool = True, init: str = "direct",
           peer: str = "bird") -> Lab:
    """Build network, filesystems, responders, peer routers (BIRD, or FRR with ``peer="frr"``) and
    (optionally) Salt; tear down on failure.

    ``init="systemd"``: every catalog node boots systemd (:mod:`anycastlb.lab.machine`) and
    runs Salt and the daemons from units, as a production host does.
    """
    t0 = time.monotonic()
    missing = missing_prerequisites(init, salt=salt)
    if missing:
        raise LabError("lab up needs what this machine lacks:\n  " + "\n  ".join(missing))
    external, ports = cat_mod.stand_ins(catalog)
    ca = acme_ca.address(external) if acme_ca.wanted(catalog) else None   # the lab's ACME CA (Pebble)
    lab = up_network(catalog, prefix=prefix, statedir=statedir, external=external + ([ca] if ca else []),
                     init=init)
    with teardown_on_failure(lab):
        print(f"network and node filesystems up in {lab.meta['network_seconds']} s", file=out)
        if init == "systemd":
            print(f"{len(lab.nodes)} nodes booted systemd (is-system-running: running) after "
                  f"{lab.meta['boot_seconds']} s more", file=out)
        protos = protocol_stand_ins(compile_catalog(catalog))
        for host, (tcp, udp) in ports.items():
            p = protos.get(host, {})
            dns_ports = {d[0] for d in p.get("dns", []) + p.get("kerberos", [])}
            ldap = sorted(set(p.get("ldap", [])))
            tcp = [x for x in tcp if x not in dns_ports and x not in ldap]
            udp = [x for x in udp if x not in dns_ports]
            if tcp or udp or ldap:
                start_responder(lab, host, tcp, udp, ldap=ldap)
                print(f"responder on {host}: tcp {tcp} udp {udp}{f' ldap {ldap}' if ldap else ''}", file=out)
        for host, p in protos.items():
            for port in sorted({d[0] for d in p.get("dns", [])}):
                start_resolver(lab, host, port, [(d[1], d[2]) for d in p["dns"] if d[0] == port])
                print(f"resolver (dnsmasq) on {host}: port {port}", file=out)
            for port, realm in sorted(set(p.get("kerberos", []))):
                start_kdc(lab, host, port, realm)
                print(f"KDC (krb5kdc) on {host}: port {port}, realm {realm}", file=out)
        if ca:
            info = acme_ca.start(lab, compile_catalog(catalog), ca[1])
            print(f"ACME CA (Pebble) on {ca[0]}: {info['directory']}, {len(info['names'])} names resolved to "
                  "their VIPs", file=out)
        lab.meta["peer_router"] = peer
        for name, pid in start_peers(lab, peer).items():
            print(f"{'FRR' if peer == 'frr' else 'BIRD'} on peer {name}: pid {pid}", file=out)
        if salt:
            fleet = compile_catalog(catalog)
            make_secrets(lab.statedir, fleet)
            lab_pillar(lab.statedir)
            from .ops import prepare as ops_prepare
            ops_prepare(lab)  # the catalog as a git checkout the ext_pillar reads, the reactor (lab/ops.py)
            secs = start_salt(lab)
            print(f"salt-master and {len(lab.nodes)} minions answering test.ping after {secs} s", file=out)
            if apply_states:
                t1 = time.monotonic()
                result = fl.apply(lab)
                changed = sum(r["changed"] for r in result.values())
                print(f"state.apply on {len(result)} minions: {changed} states changed, 0 failed, "
                      f"{time.monotonic() - t1:.1f} s", file=out)
                lab.meta["apply_seconds"] = round(time.monotonic() - t1, 1)
                # the runner (salt-run's start, a lint of the catalog) needs nothing of what follows
                # and nothing that follows needs it: it runs meanwhile (17 s at 1,000 services)
                with ThreadPoolExecutor(1) as pool:
                    marked = pool.submit(_mark_deployed, lab)
                    conv = fl.wait_converged(lab, fleet)
                    print(f"route reflectors carry every expected announcement after {conv} s", file=out)
                    if ca:
                        print(acme_ca.renew(lab), file=out)
                    first = fl.run_checks_now(lab, fleet)
                    lab.meta["first_round"] = first
                    print(f"HAProxy's first verdicts on every backend server after {first['haproxy_s']} s; the "
                          f"first icinga2 round settled {first['round_s']} s after it was forced, "
                          f"{len(first['not_ok'])} check(s) not OK", file=out)
                    marked.result()
                print("the catalog is recorded as deployed (rolling deploys drain only where routing changes)",
                      file=out)
        lab.meta["up_seconds"] = round(time.monotonic() - t0, 1)
        lab.save()
    print(lab.summary(), file=out)
    if salt and apply_states:
        print(fl.format_status(fl.status(lab, fleet)), file=out)
    print(f"lab up in {lab.meta['up_seconds']} s; `anycastlb lab status`, `anycastlb lab shell NODE`, "
          f"`anycastlb lab down`", file=out)
    return lab


def _mark_deployed(lab: Lab) -> None:
    """``salt-run anycastlb.mark_deployed``: the catalog the first ``state.apply`` applied is the deployed one."""
    from .ops import salt_run
    rc, ret, raw = salt_run(lab, "anycastlb.mark_deployed")
    if rc != 0 or not (ret or {}).get("result"):
        raise RuntimeError(f"salt-run anycastlb.mark_deployed failed: {raw[-1000:]}")


@contextlib.contextmanager
def temporary_lab(catalog: str | Path = DEFAULT_CATALOG, tag: str = "tmp", restart_minions: bool = False,
                  salt: bool = True, init: str = "direct", peer: str = "bird") -> Iterator[Lab]:
    """``lab up`` of a copy of ``catalog`` (a file or a directory) in its own ``/var/tmp/aclb-<tag>-*`` (prefix
    ``aclb<tag[:3]><hex4>``) for the duration of the block, torn down after it, also on
    SIGTERM/SIGHUP. The lab carries ``up_seconds`` and ``up_output`` (what ``lab up`` printed).
    Used by the lab tests and the benchmarks."""
    from .ops import restart_minions as restart

    work = Path(tempfile.mkdtemp(prefix=f"aclb-{tag}-", dir="/var/tmp"))
    copy = work / Path(catalog).name
    if Path(catalog).is_dir():
        shutil.copytree(catalog, copy)
    else:
        shutil.copy(catalog, copy)
    out = io.StringIO()
    t0 = time.monotonic()
    try:
        lab = lab_up(copy, prefix=f"aclb{tag[:3]}{secrets.token_hex(2)}", statedir=work / "state", out=out,
                     salt=salt, init=init, peer=peer)
    except BaseException:
        print(out.getvalue()[-3000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        raise
    lab.up_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
    lab.up_output = out.getvalue()  # type: ignore[attr-defined]
    try:
        with teardown_on_failure(lab):
            if salt and restart_minions:
                restart(lab)  # the first firewall load catches their connections mid-stream (docs/salt.md)
            yield lab
    finally:
        try:
            lab.down()
        except LabError as exc:
            print(f"teardown: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


def _cmd_up(a: argparse.Namespace) -> int:
    try:
        lab_up(a.catalog, a.prefix, a.statedir, salt=not a.no_salt, apply_states=not a.no_apply, init=a.init,
               peer=a.peer)
    except LabError as exc:
        print(f"anycastlb lab up: {exc}", file=sys.stderr)
        return 1
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


def _loaded(cmd: str, a: argparse.Namespace) -> Lab | None:
    """The lab ``a`` names, or None after saying on stderr why there is none."""
    try:
        return load_lab(a.prefix, a.statedir)
    except LabError as exc:
        print(f"anycastlb lab {cmd}: {exc}", file=sys.stderr)
        return None


def _cmd_status(a: argparse.Namespace) -> int:
    if (lab := _loaded("status", a)) is None:
        return 2
    if a.hosts:
        print(lab.summary())
    st = fl.status(lab)
    if a.json:
        print(json.dumps(st, indent=1, sort_keys=True))
    else:
        print(fl.format_status(st))
    return 0


def _cmd_deploy(a: argparse.Namespace) -> int:
    from .ops import OpsError, deploy

    if (lab := _loaded("deploy", a)) is None:
        return 2
    try:
        done = deploy(lab, a.catalog, message=a.message or "", timeout=a.timeout, out=sys.stdout)
    except OpsError as exc:
        print(f"anycastlb lab deploy: {exc}", file=sys.stderr)
        return 1
    return 0 if done.ok else 1


def _cmd_exec(a: argparse.Namespace) -> int:
    if (lab := _loaded("exec", a)) is None:
        return 2
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    r = lab.exec(a.node, argv, capture=False, timeout=None, input=None)
    return r.returncode


def _cmd_shell(a: argparse.Namespace) -> int:
    if (lab := _loaded("shell", a)) is None:
        return 2
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
    p.add_argument("--no-apply", action="store_true", help="start Salt but do not run state.apply")
    p.add_argument("--init", choices=("direct", "systemd"), default="direct",
                   help="direct: daemons run in per-node namespaces (default); systemd: every node boots "
                        "systemd as PID 1 (systemd-nspawn) and runs them from units")
    p.add_argument("--peer", choices=("bird", "frr"), default="bird",
                   help="the peer routers' software (default %(default)s; frr: zebra, bfdd, bgpd)")
    p.set_defaults(func=_cmd_up)
    common(sub.add_parser("down", help="tear the lab down")).set_defaults(func=_cmd_down)
    p = common(sub.add_parser("status", help="per service VIP and port: reachable, announced by, backends, checks"))
    p.add_argument("--hosts", action="store_true", help="also list hosts and processes")
    p.add_argument("--json", action="store_true", help="the status as JSON")
    p.set_defaults(func=_cmd_status)
    p = common(sub.add_parser("deploy", help="commit CATALOG into the lab's catalog repository and push it from "
                                             "the master node (hook, reactor, orch.deploy); print the steps as "
                                             "they run and the result; exit 0 only if the deploy succeeded"))
    p.add_argument("catalog", help="catalog file or directory (the kind the lab was built from)")
    p.add_argument("-m", "--message", help="the commit message (default: anycastlb lab deploy <name>)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds to wait for the orchestration's result (default %(default)s)")
    p.set_defaults(func=_cmd_deploy)
    p = common(sub.add_parser("exec", help="run a command in a lab host"))
    p.add_argument("node", help="a lab host (a node or peer of the catalog)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command and its arguments")
    p.set_defaults(func=_cmd_exec)
    p = common(sub.add_parser("shell", help="interactive shell in a lab host"))
    p.add_argument("node", help="a lab host (a node or peer of the catalog)")
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
