"""The fleet in the lab: secrets, ``state.apply`` through the real salt-master, convergence, status.

Everything here drives the lab from outside, the way an operator would: the
states that run on the minions are the production ones.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..compiler import Fleet, compile_catalog
from ..poll import poll_until
from . import acme_ca
from .salt import PYTHON, master_node, salt_cmd

if TYPE_CHECKING:
    from .core import Lab

CLIENT = "client"


class FleetError(RuntimeError):
    """The fleet did not apply or did not converge; the message says where."""


def make_secrets(statedir: Path, fleet: Fleet) -> Path:
    """A self-signed certificate per certificate name the catalog uses, in a secrets file (0600).

    A certificate names the apache ``server_name`` of the services that use it (every
    service's, for one no service names) and ``*.example.org``-style wildcards of those
    names, its first name the subject's CN, so a client can verify it with the certificate
    as its CA, and services that share a VIP:port each serve their own (HAProxy picks by SNI).
    """
    certs: set[str] = set()
    for m in fleet.nodes.values():
        if m["haproxy"]:
            certs.update(m["haproxy"]["certificates"])
    names_of: dict[str, set[str]] = {}
    for s in fleet.services.values():
        if s["apache"] and s["apache"].get("server_name"):
            names_of.setdefault(str(s["tls"]), set()).add(s["apache"]["server_name"])
    everyone = set().union(*names_of.values()) if names_of else set()
    out: dict[str, Any] = {"certificates": {}, "bgp_passwords": {}}
    d = statedir / "pki"
    d.mkdir(parents=True, exist_ok=True)
    for name in sorted(certs):
        names = names_of.get(name) or everyone
        sans = sorted(names) + sorted({"*." + n.split(".", 1)[1] for n in names if "." in n} | {"localhost"})
        key, crt = d / f"{name}.key", d / f"{name}.crt"
        if not crt.exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825",
                            "-subj", f"/CN={sans[0]}", "-addext", "subjectAltName=" + ",".join(
                                f"DNS:{n}" for n in sans), "-keyout", str(key), "-out", str(crt)],
                           check=True, capture_output=True, timeout=60)
        out["certificates"][name] = {"cert": crt.read_text(), "key": key.read_text()}
    path = statedir / "secrets.yaml"
    path.write_text(yaml.safe_dump(out))
    path.chmod(0o600)
    return path


def lab_pillar(statedir: Path) -> Path:
    """Site settings for the lab (packages are installed on the host already)."""
    d = statedir / "pillar"
    d.mkdir(parents=True, exist_ok=True)
    (d / "top.sls").write_text("base:\n  '*':\n    - site\n")
    (d / "site.sls").write_text("anycastlb:\n  manage_packages: False\n")
    return d


def apply(lab: "Lab", target: str = "*", timeout: int = 300, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``salt TARGET state.apply``; returns per-minion counts, raises FleetError on any failed state."""
    rc, out, err = salt_cmd(lab, target, "state.apply", *extra, "--out=json", "--static", f"--timeout={timeout}",
                            timeout=timeout + 60)
    try:
        data = json.loads(out) if out.strip() else {}
    except ValueError:
        raise FleetError(f"state.apply gave no JSON (rc {rc}): {out[-2000:]} {err[-2000:]}")
    summary: dict[str, Any] = {}
    failures: list[str] = []
    for minion, states in sorted(data.items()):
        if not isinstance(states, dict):
            failures.append(f"{minion}: {states}")
            continue
        ok = [s for s in states.values() if isinstance(s, dict) and s.get("result") is True]
        bad = [s for s in states.values() if isinstance(s, dict) and s.get("result") is False]
        changed = [s for s in states.values() if isinstance(s, dict) and s.get("changes")]
        summary[minion] = {"ok": len(ok), "failed": len(bad), "changed": len(changed)}
        failures.extend(f"{minion}: {s.get('name')}: {str(s.get('comment'))[:1500]}" for s in bad)
    if target == "*":
        missing = sorted(set(lab.nodes) - set(data))
        failures.extend(f"{m}: no return (minion not connected?)" for m in missing)
    if failures or rc not in (0,):
        raise FleetError("state.apply failed:\n  " + "\n  ".join(failures or [f"rc {rc}: {err[-2000:]}"]))
    return summary


def announcers(lab: "Lab", fleet: Fleet, rr: str | None = None) -> dict[str, list[str]]:
    """Prefix → nodes whose path a route reflector carries (read with birdc on the RR)."""
    from ..answers.bird import announcers as carried_from, parse_routes

    if rr is None:
        rr = next(n for n, m in fleet.nodes.items() if "route-reflector" in m["roles"])
    r = lab.exec(rr, ["birdc", "-s", "/run/bird/bird.ctl", "show", "route", "all"], timeout=20)
    return carried_from(parse_routes(r.stdout), fleet.nodes)


def expected_announcers(fleet: Fleet) -> dict[str, list[str]]:
    """Prefix → active nodes that should announce it."""
    out: dict[str, set[str]] = {}
    for n, m in fleet.nodes.items():
        bgp = m["bgp"]
        for p in bgp["announce"] if bgp and bgp["role"] == "speaker" else []:
            out.setdefault(p, set()).add(n)
    return {p: sorted(v) for p, v in out.items()}


def wait_converged(lab: "Lab", fleet: Fleet, timeout: float = 90.0) -> float:
    """Wait until every route reflector carries exactly the expected announcers; return seconds."""
    want = expected_announcers(fleet)
    rrs = [n for n, m in fleet.nodes.items() if "route-reflector" in m["roles"]]
    polled = poll_until(lambda: {rr: announcers(lab, fleet, rr) for rr in rrs},
                        lambda got: all(g == want for g in got.values()), timeout, 0.5)
    if not polled.done:
        raise FleetError(f"route reflectors did not converge in {timeout}s: want {want}, got {polled.value}")
    return round(polled.waited, 1)


def _in_allow(addr: str, allow: list[str]) -> bool:
    if "any" in allow:
        return True
    ip = ipaddress.ip_address(addr)
    return any(ip.version == ipaddress.ip_network(a).version and ip in ipaddress.ip_network(a) for a in allow)


def probe_specs(lab: "Lab", fleet: Fleet, source: str, pki: Path | None) -> list[dict[str, Any]]:
    """One probe per service VIP and port, as a client at ``source`` would try it (an https probe
    trusts only the service's own certificate, ``<pki>/<name>.crt``)."""
    host = lab.host(source)
    specs = []
    for sname, s in fleet.services.items():
        for vip in s["vips"]:
            v6 = ":" in vip
            src = host.address6 if v6 else host.address
            if src is None:
                continue
            for port in s["ports"]:
                number, proto = port.split("/")
                spec: dict[str, Any] = {"service": sname, "address": vip, "port": int(number), "source": source,
                                        "allowed": _in_allow(src, s["allow"]), "timeout": 2.0}
                check = s["check"]
                if check["type"] == "dns" and int(number) == check["port"]:
                    spec.update(kind="dns", transport=proto, name=check["name"], qtype=check["qtype"])
                elif check["type"] == "kerberos" and int(number) == check["port"]:
                    spec.update(kind="kerberos", transport=proto, realm=check["realm"])
                elif check["type"] == "ldap" and proto == "tcp":
                    spec["kind"] = "ldap"
                elif proto == "udp":
                    spec["kind"] = "udp"
                elif s["mode"] == "http":   # the request Icinga's VIP check sends (routes of a shared VIP too)
                    req = s["requests"][number]
                    spec.update(kind="https" if req["tls"] else "http", host=req["host"] or vip,
                                path=req["path"], expect=req["expect"] or "200")
                    own = pki / f"{s['tls']}.crt" if pki is not None else None
                    if req["tls"] and s["tls"] == "acme":
                        spec["cafile"] = acme_ca.trust(lab)
                    elif req["tls"] and own is not None and own.exists():
                        spec["cafile"] = str(own)
                else:
                    spec["kind"] = "tcp"
                specs.append(spec)
    return specs


def run_probes(lab: "Lab", source: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run probes inside ``source``'s namespace (bounded: one try each, 2 s timeout)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=str(lab.statedir), delete=False) as fh:
        json.dump(specs, fh)
        path = fh.name
    try:
        r = lab.exec(source, [PYTHON, "-m", "anycastlb.lab.probe", path], timeout=30 + 3 * len(specs),
                     cwd=str(lab.repo))
    finally:
        Path(path).unlink(missing_ok=True)
    if r.returncode != 0:
        raise FleetError(f"probe in {source} failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout)


def haproxy_states(lab: "Lab", node: str) -> dict[str, dict[str, str]]:
    """Backend → server → status, from one LB node's stats socket (``DRAIN``: UP at weight 0)."""
    from ..answers.haproxy import parse_show_stat

    r = lab.exec(node, ["sh", "-c", "echo 'show stat' | socat stdio UNIX-CONNECT:/run/haproxy/admin.sock"],
                 timeout=10)
    try:
        rows = parse_show_stat(r.stdout, ("status", "weight"))
    except ValueError:
        return {}
    out: dict[str, dict[str, str]] = {}
    for (px, sv), row in rows.items():
        if sv in ("FRONTEND", "BACKEND") or not px:
            continue
        status = row["status"]
        if row["weight"] == "0" and status.startswith("UP"):
            status = "DRAIN"
        out.setdefault(px, {})[sv] = status
    return out


def _livestatus(lab: "Lab", node: str, query: str) -> Any:
    """One Livestatus query on ``node``'s Icinga2 (the completed process)."""
    from ..render import icinga2 as ic
    return lab.exec(node, ["socat", "-t", "5", "-", f"UNIX-CONNECT:{ic.LIVESTATUS_SOCKET}"], input=query, timeout=20)


def _livestatus_rows(lab: "Lab", node: str, query: str) -> list[list[Any]] | None:
    """The JSON rows of a Livestatus query (``OutputFormat: json``), or None when it gave none."""
    r = _livestatus(lab, node, query)
    try:
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
    except ValueError:
        return None


def icinga_states(lab: "Lab", fleet: Fleet) -> dict[str, dict[str, str]] | None:
    """``host!service`` → state and output, from the monitoring node's Icinga2 (Livestatus)."""
    from ..render import icinga2 as ic
    mons = [n for n, m in fleet.nodes.items() if "monitoring" in m["roles"]]
    if not mons:
        return None
    r = _livestatus(lab, mons[0], ic.LIVESTATUS_QUERY)
    if r.returncode != 0:
        return {"livestatus": {"state": "UNKNOWN", "output": (r.stderr or r.stdout).strip()[:200]}}
    return ic.parse_livestatus(r.stdout)


def haproxy_unsettled(lab: "Lab", fleet: Fleet) -> dict[str, list[str]]:
    """LB node → its servers HAProxy has no first verdict on yet (never checked, or between
    rise/fall: ``DOWN 1/2``, ``UP 2/3``), read from each HAProxy node's stats socket."""
    from ..answers.haproxy import parse_show_stat

    out: dict[str, list[str]] = {}
    for node in sorted(n for n, m in fleet.nodes.items() if m["haproxy"]):
        r = lab.exec(node, ["sh", "-c", "echo 'show stat' | socat stdio UNIX-CONNECT:/run/haproxy/admin.sock"],
                     timeout=20)
        try:
            rows = parse_show_stat(r.stdout, ("status", "check_status", "tracked"))
        except ValueError:
            out[node] = ["(stats socket unreadable)"]
            continue
        for (px, sv), row in rows.items():
            status, check = row["status"], row["check_status"].lstrip("* ")
            if sv in ("FRONTEND", "BACKEND") or status == "no check" or status.startswith("MAINT") or row["tracked"]:
                continue   # a tracking server has no check of its own: the shared one it tracks is listed
            if check in ("", "INI", "UNK") or "/" in status:
                out.setdefault(node, []).append(f"{px}/{sv} {status} {check or '-'}")
    return out


def _icinga_command(lab: "Lab", mon: str, commands: list[str]) -> None:
    """External commands through the poller's pipe on the monitoring node (one write for all)."""
    from ..render import icinga2 as ic
    if commands:
        r = lab.exec(mon, ["sh", "-c", f"cat > {ic.COMMAND_PIPE}"], input="".join(commands), timeout=60)
        if r.returncode != 0:
            raise FleetError(f"icinga2 commands on {mon}: {r.stderr.strip()[-500:]}")


#: Checks the first round forces per second (the rest later, by Icinga2's own scheduler).
FORCE_RATE = 250
#: Seconds after which the first round forces once more what has no result of it yet.
REFORCE_S = 15.0


def _force_checks(lab: "Lab", mon: str, checks: list[tuple[str, str]], now: int, rate: int = 0) -> None:
    """Icinga2 runs each (host, service) check now, or, with ``rate``, that many a second from now."""
    _icinga_command(lab, mon, [f"[{now}] SCHEDULE_FORCED_SVC_CHECK;{h};{d};{now + (i // rate if rate else 0)}\n"
                               for i, (h, d) in enumerate(checks)])


def run_checks_now(lab: "Lab", fleet: Fleet, timeout: float = 120.0) -> dict[str, Any]:
    """The first full check round: wait for HAProxy's own first verdicts on every backend
    server and for the monitoring node's BIRD to carry every expected announcement, then
    have Icinga2 run every check it schedules itself now, paced at FORCE_RATE a second (the poller among them, which
    hands in the passive ones) and wait until every check has a result from this round.

    Returns ``haproxy_s`` (the wait for HAProxy and the monitoring node's routes), ``round_s`` (from the
    forced round to every check's result from it) and ``not_ok`` (``host!service`` → state of what was not OK then).
    """
    from ..render import icinga2 as ic
    mons = [n for n, m in fleet.nodes.items() if "monitoring" in m["roles"]]
    if not mons:
        return {"haproxy_s": 0.0, "round_s": 0.0, "not_ok": {}}
    t0 = time.monotonic()
    settled = poll_until(lambda: haproxy_unsettled(lab, fleet), lambda u: not u, 60.0, 0.5)
    if not settled.done:
        print(f"HAProxy had no first verdict after 60 s on: {settled.value}", file=sys.stderr)
    # the monitoring node's BIRD (the listener the announcer checks read, and its routes to the VIPs)
    # learns every path after the route reflectors: at 1,000 services it lagged them
    want = expected_announcers(fleet)
    heard = poll_until(lambda: announcers(lab, fleet, mons[0]), lambda got: got == want, 60.0, 0.5)
    if not heard.done:
        print(f"{mons[0]}'s BIRD did not carry every expected announcement after 60 s", file=sys.stderr)
    waited = round(time.monotonic() - t0, 1)
    query = "GET services\nColumns: host_name description active_checks_enabled\nOutputFormat: json\n\n"
    rows = poll_until(lambda: _livestatus_rows(lab, mons[0], query), bool, timeout, 1.0).value or []
    t1 = time.monotonic()
    now = int(time.time())
    # Icinga2's own scheduling, paced: at 1,000 services about 6,600 active checks forced in
    # the same second left a 2-core node's check_http waiting past its 10 s timeout (158
    # VIP checks CRITICAL that were OK at the next check); spread at FORCE_RATE a second.
    # Now the network checks are the poller's probes too: what is forced is the poller (and
    # the ACME checks, which stay active).
    active = [(h, d) for h, d, enabled in rows if enabled]
    _force_checks(lab, mons[0], active, now, FORCE_RATE)
    # settled = every check has a result from this round (an earlier one, e.g. a poller run
    # Icinga2 scheduled while the fleet was still coming up, is not PENDING but may be stale)
    fresh = "GET services\nColumns: host_name description state last_check\nOutputFormat: json\n\n"
    forced_at = {"t": time.monotonic()}
    forced = set(active)

    def rows_forcing_again() -> list[Any]:
        """The rows; a check forced while it ran (the poller, about 8 s a run at 1,000 services) is
        not run again by Icinga2, whose next run is then its interval away: forced once more."""
        rs = _livestatus_rows(lab, mons[0], fresh) or []
        if time.monotonic() - forced_at["t"] > REFORCE_S:
            stale = [(h, d) for h, d, _s, last in rs if int(last) < now and (h, d) in forced]
            _force_checks(lab, mons[0], stale, int(time.time()))
            forced_at["t"] = time.monotonic()
        return rs
    done = poll_until(rows_forcing_again, lambda rs: bool(rs) and all(int(last) >= now for _h, _d, _s, last in rs),
                      max(timeout - (time.monotonic() - t1), 0.0), 1.0).value or []
    return {"haproxy_s": waited, "round_s": round(time.monotonic() - t1, 1),
            "not_ok": {f"{h}!{d}": ic.STATES.get(int(st), "UNKNOWN") if int(last) else "PENDING"
                       for h, d, st, last in done if int(st) != 0 or not int(last)}}


def status(lab: "Lab", fleet: Fleet | None = None) -> dict[str, Any]:
    """Everything ``lab status`` prints, as data."""
    fleet = fleet or compile_catalog(lab.catalog)
    pki = lab.statedir / "pki"   # each service's https probe trusts its own certificate (make_secrets)
    campus = master_node(lab)
    results = run_probes(lab, CLIENT, probe_specs(lab, fleet, CLIENT, pki))
    client4 = lab.host(CLIENT).address
    results += run_probes(lab, campus, [s for s in probe_specs(lab, fleet, campus, pki)
                                        if not (client4 and _in_allow(client4, fleet.services[s["service"]]["allow"]))])
    ann = announcers(lab, fleet)
    lbs = [n for n, m in fleet.nodes.items() if m["haproxy"] and m["state"] == "active"]
    ha = haproxy_states(lab, lbs[0]) if lbs else {}
    ic = icinga_states(lab, fleet)
    return {"probes": results, "announcers": ann, "expected": expected_announcers(fleet), "haproxy": ha,
            "haproxy_node": lbs[0] if lbs else None, "icinga": ic}


def format_status(st: dict[str, Any]) -> str:
    """The status as a table and a one-line summary."""
    rows = [f"{'service':10} {'vip':18} {'port':8} {'from':7} {'result':8} {'announced by':16} detail"]
    good = bad = 0
    for p in st["probes"]:
        prefix = f"{p['address']}/{128 if ':' in p['address'] else 32}"
        ann = ",".join(st["announcers"].get(prefix, [])) or "-"
        as_expected = p["ok"] == p["allowed"]
        good += as_expected
        bad += not as_expected
        verdict = ("ok" if p["ok"] else "refused") if as_expected else ("OPEN!" if p["ok"] else "FAIL")
        rows.append(f"{p['service']:10} {p['address']:18} {str(p['port']) + '/' + ('udp' if 'udp' in (p['kind'], p.get('transport')) else 'tcp'):8} "
                    f"{p['source']:7} {verdict:8} {ann:16} {p['detail'][:60]}")
    missing = {p: sorted(set(w) - set(st["announcers"].get(p, []))) for p, w in st["expected"].items()}
    missing = {p: v for p, v in missing.items() if v}
    if st["haproxy"]:
        rows.append(f"haproxy backends on {st['haproxy_node']}:")
        for be, servers in sorted(st["haproxy"].items()):
            rows.append(f"  {be:16} " + ", ".join(f"{s} {v}" for s, v in sorted(servers.items())))
    ic = st.get("icinga")
    ic_line = ""
    if ic is not None:
        counts: dict[str, int] = {}
        for v in ic.values():
            counts[v["state"]] = counts.get(v["state"], 0) + 1
        rows.append("icinga2 checks: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        not_ok = sorted(k for k, v in ic.items() if v["state"] != "OK")
        for k in not_ok[:20]:
            rows.append(f"  {ic[k]['state']:8} {k}: {ic[k]['output'][:70]}")
        ic_line = f", icinga2 {counts.get('OK', 0)}/{len(ic)} OK"
    summary = (f"summary: {good}/{good + bad} probes as the catalog says"
               f"{', missing announcements: ' + str(missing) if missing else ', every active node announces'}"
               f"{ic_line}")
    rows.append(summary)
    return "\n".join(rows)
