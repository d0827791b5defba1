"""Idle LDAP binds: held through the lab's HAProxy for 10 minutes (issue 19).

The operator fleet's ``ldap`` service (tests/data/operator-fleet.yaml: per-service
``timeouts`` of 15 minutes, ports 389 and 636 mapped to 1389 and 1636) in a lab of only
what it needs: one LB node (lb1), one route reflector, the salt-master, the peer router,
the two directory stand-ins (:mod:`anycastlb.lab.responder`, which never cuts an idle
LDAP connection). Beside it, in the same lab and the same process, the baseline: the same
directory behind a service whose idle limit is 30 s (``ldap-short``, VIP 192.0.2.90,
``haproxy.timeouts.tunnel: 30s``), and a control connection straight to the directory (no
HAProxy), which says whether a drop was HAProxy's or the directory's.

What decides (measured here first): in mode tcp an established connection is a tunnel, and
HAProxy applies ``timeout tunnel`` to it (the service's, else 1h from ``defaults``), not
``timeout client``/``server``: a service with the 30 s client and server defaults held a bind
idle past 30 s. The baseline therefore sets the tunnel timeout.

From the lab's client namespace: an anonymous bind on each connection, then nothing for
``--hold`` seconds (600) while every socket is watched for the server closing it (the
drop time is the moment the FIN arrives); at the end, a second bind on every connection
still open. Prints when each connection was dropped (or that it held), and the ratio of
the time the service's connections held to the time the baseline's lasted.

Target: both ``ldap`` connections (389 and 636) answer the second bind after ``--hold``
seconds idle; the baseline must be dropped (else the run proves nothing). Exit 1 otherwise.

Run: ``sudo .venv/bin/python benchmarks/ldap_idle.py [--hold 600]`` (about 12 minutes;
the lab is idle while it waits).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, lab as bench_lab, machine, need_root  # noqa: E402

FLEET = ROOT / "tests" / "data" / "operator-fleet.yaml"
KEEP_NODES = ("rr1", "lb1", "mon1")

# Runs in the lab's client namespace: bind on each connection, watch them idle, bind again.
HOLD = r"""
import json, selectors, socket, sys, time
BIND = bytes.fromhex("300c020101600702010304008000")
targets = json.loads(sys.argv[1]); hold = float(sys.argv[2])
sel = selectors.DefaultSelector(); out = {}
for name, (addr, port) in targets.items():
    s = socket.create_connection((addr, port), timeout=5)
    s.sendall(BIND)
    first = s.recv(100)
    out[name] = {"first_bind": first.hex(), "dropped_after_s": None, "second_bind": None}
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, name)
t0 = time.monotonic()
while (left := hold - (time.monotonic() - t0)) > 0 and sel.get_map():
    for key, _ in sel.select(timeout=min(left, 5)):
        try:
            data = key.fileobj.recv(100)
        except OSError:
            data = b""
        if not data:   # the server closed it (FIN or RST)
            out[key.data]["dropped_after_s"] = round(time.monotonic() - t0, 1)
            sel.unregister(key.fileobj)
            key.fileobj.close()
for key in list(sel.get_map().values()):
    s = key.fileobj
    s.setblocking(True); s.settimeout(5)
    try:
        s.sendall(BIND); out[key.data]["second_bind"] = s.recv(100).hex()
    except OSError as exc:
        out[key.data]["second_bind"] = repr(exc)
    s.close()
print(json.dumps(out))
"""

SUCCESS = "300c02010161070a0100"   # BindResponse, message id 1, resultCode success


def bench_catalog(directory: Path) -> Path:
    """The operator fleet cut down to its LDAP service, plus the baseline service."""
    cat = yaml.safe_load(FLEET.read_text())
    cat["nodes"] = {n: spec for n, spec in cat["nodes"].items() if n in KEEP_NODES}
    cat["nodes"]["mon1"]["roles"] = ["salt-master"]   # no Icinga2: the lab idles lighter
    cat["clusters"] = {"edge": {"nodes": ["lb1"]}}
    ldap = cat["services"]["ldap"]
    cat["services"] = {"ldap": ldap, "ldap-short": {
        "mode": "tcp", "vip": "192.0.2.90", "ports": [389], "backend_port": {389: 1389}, "cluster": "edge",
        "check": {"ldap": {"port": 1389}}, "allow": ldap["allow"], "backends": ldap["backends"],
        "haproxy": {"timeouts": {"tunnel": "30s"}}}}
    path = directory / "ldap-idle.yaml"
    path.write_text(yaml.safe_dump(cat, sort_keys=False))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hold", type=float, default=600.0, help="seconds each connection stays idle (600)")
    args = ap.parse_args()
    need_root()
    print(machine(), flush=True)
    from anycastlb.lab.net import CLIENT
    from anycastlb.lab.salt import PYTHON

    with tempfile.TemporaryDirectory(prefix="aclb-ldapidle-", dir="/var/tmp") as tmp:
        catalog = bench_catalog(Path(tmp))
        with bench_lab(catalog, tag="ldapidle", restart_minions=False) as lab:
            targets = {"ldap 389 (the catalog's)": ["192.0.2.89", 389], "ldap 636 (the catalog's)": ["192.0.2.89", 636],
                       "baseline: ldap-short 389 (tunnel 30s)": ["192.0.2.90", 389],
                       "control: the directory, no HAProxy": ["203.0.113.89", 1389]}
            print(f"holding {len(targets)} idle LDAP connections for {args.hold:.0f} s ...", flush=True)
            t0 = time.monotonic()
            r = lab.exec(CLIENT, [PYTHON, "-c", HOLD, json.dumps(targets), str(args.hold)],  # type: ignore[attr-defined]
                         timeout=args.hold + 120, cwd=str(ROOT))
            waited = time.monotonic() - t0
    if r.returncode != 0:
        print(f"the client failed: {r.stderr[-2000:]}")
        return 1
    got = json.loads(r.stdout)
    print(f"\nidle for {args.hold:.0f} s (the client ran {waited:.0f} s):")
    for name, res in got.items():
        ok_first = res["first_bind"].startswith(SUCCESS)
        if res["dropped_after_s"] is not None:
            fate = f"dropped after {res['dropped_after_s']:.1f} s idle"
        else:
            fate = "held; second bind " + ("answered (success)" if str(res["second_bind"]).startswith(SUCCESS)
                                           else f"failed: {res['second_bind']}")
        print(f"  {name:48} first bind {'success' if ok_first else 'FAILED'}; {fate}")
    ours = [got[k] for k in got if k.startswith("ldap ")]
    base = next(v for k, v in got.items() if k.startswith("baseline"))
    held = all(v["dropped_after_s"] is None and str(v["second_bind"]).startswith(SUCCESS) for v in ours)
    if base["dropped_after_s"]:
        print(f"ratio: the service's binds held {args.hold:.0f} s idle, {args.hold / base['dropped_after_s']:.1f}x "
              f"the {base['dropped_after_s']:.1f} s the baseline lasted")
    failed = []
    if not held:
        failed.append("an ldap connection did not survive the hold")
    if base["dropped_after_s"] is None:
        failed.append("the baseline was not dropped: the run cannot tell the settings apart")
    print("target met: both ldap binds held idle" if not failed else "TARGET MISSED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
