#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""One HAProxy frontend and its backend, read from the node's stats endpoint.

Reads HAProxy's Prometheus exporter (``/metrics``) or its stats CSV (``/stats;csv``),
whichever the URI returns (detected from the content). CRITICAL when the frontend is
not OPEN or the backend has no UP server; WARNING when only backup servers are UP;
OK otherwise. Draining and maintenance servers are named in the output.

Every service of a node has its own check, but they all read the same endpoint, whose
size grows with the number of services: without sharing, n checks cost n² work. So the
parsed statistics are kept for ``--cache-s`` seconds (10 by default, 0 turns it off) in a
private directory of the user running the checks, and one check at a time fetches
(``flock``): the other checks of that node in the window read a small JSON file.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass
class Stats:
    """What the check needs from HAProxy: frontend status, backend servers by state."""

    frontends: dict[str, str] = field(default_factory=dict)       # name → OPEN / STOP / ...
    servers: dict[str, dict[str, str]] = field(default_factory=dict)  # backend → server → status
    backup: dict[str, set[str]] = field(default_factory=dict)      # backend → backup servers (CSV only)
    up_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # backend → (active UP, backup UP)


#: The ``show stat`` columns the health agent's verdict needs (it parses every 100 ms).
VERDICT_COLUMNS = ("pxname", "svname", "status", "act", "bck")


def parse_show_stat(text: str, columns: tuple[str, ...] = VERDICT_COLUMNS) -> dict[tuple[str, str], dict[str, str]]:
    """HAProxy's ``show stat`` CSV (stats socket, or the stats page's ``;csv``) →
    ``{(pxname, svname): {column: value}}`` for ``columns`` (``pxname`` and ``svname`` always).

    The one parser of this format: anycastlb-healthd, the orchestration, the lab and this
    plugin use it. Only the wanted columns are kept (healthd runs it every 100 ms): proxy
    and server names cannot hold commas or quotes and the leading columns are numbers and
    states, so a plain split is exact up to the last wanted column. Raises ValueError if
    the answer is not a stats CSV (e.g. "Permission denied").
    """
    if not text.startswith("# "):
        first = text.strip().splitlines()[0] if text.strip() else "empty answer"
        raise ValueError(f"not a show stat answer: {first[:120]!r}")
    header, _, body = text[2:].partition("\n")
    names = header.split(",")
    want = tuple(dict.fromkeys(("pxname", "svname", *columns)))
    try:
        idx = [names.index(c) for c in want]
    except ValueError:
        raise ValueError(f"show stat header lacks one of {', '.join(want)}") from None
    last = max(idx)
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for line in body.splitlines():
        cells = line.split(",", last + 1)
        if len(cells) <= last:
            continue
        row = {c: cells[i] for c, i in zip(want, idx)}
        rows[(row["pxname"], row["svname"])] = row
    return rows


def parse_csv(text: str) -> Stats:
    """HAProxy's ``show stat`` / ``;csv`` output (read with :func:`parse_show_stat`)."""
    st = Stats()
    for (px, sv), row in parse_show_stat(text, ("status", "bck")).items():
        status = row["status"]
        if sv == "FRONTEND":
            st.frontends[px] = status
        elif sv != "BACKEND" and px:
            st.servers.setdefault(px, {})[sv] = status
            if row.get("bck") == "1":
                st.backup.setdefault(px, set()).add(sv)
    for px, servers in st.servers.items():
        backups = st.backup.get(px, set())
        act = sum(1 for s, v in servers.items() if s not in backups and _up(v))
        bck = sum(1 for s, v in servers.items() if s in backups and _up(v))
        st.up_counts[px] = (act, bck)
    return st


_METRIC = re.compile(r'^(?P<name>haproxy_\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> Stats:
    """HAProxy's Prometheus exporter output (``haproxy_*_status`` and server counts)."""
    st = Stats()
    counts: dict[str, list[int]] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        name, value = m.group("name"), float(m.group("value"))
        proxy = labels.get("proxy", "")
        if name == "haproxy_frontend_status" and value == 1:
            st.frontends[proxy] = "OPEN" if labels.get("state") == "UP" else labels.get("state", "?")
        elif name == "haproxy_server_status" and value == 1:
            st.servers.setdefault(proxy, {})[labels.get("server", "")] = labels.get("state", "?")
        elif name == "haproxy_server_status":
            st.servers.setdefault(proxy, {}).setdefault(labels.get("server", ""), "?")
        elif name == "haproxy_backend_active_servers":
            counts.setdefault(proxy, [0, 0])[0] = int(value)
        elif name == "haproxy_backend_backup_servers":
            counts.setdefault(proxy, [0, 0])[1] = int(value)
    st.up_counts = {k: (v[0], v[1]) for k, v in counts.items()}
    return st


def parse(text: str) -> Stats:
    """CSV or Prometheus, detected from the content."""
    if text.lstrip().startswith("# pxname"):
        return parse_csv(text.lstrip())
    if "haproxy_" in text:
        return parse_prometheus(text)
    raise ValueError("neither HAProxy stats CSV nor Prometheus metrics")


def _up(status: str) -> bool:
    return status.startswith("UP") or status == "no check"


def evaluate(stats: Stats, frontend: str, backend: str, where: str = "") -> tuple[int, str]:
    """State and output line for one frontend/backend pair."""
    at = f" on {where}" if where else ""
    if frontend not in stats.frontends:
        return CRITICAL, f"CRITICAL: frontend {frontend} not found{at}"
    if backend not in stats.servers and backend not in stats.up_counts:
        return CRITICAL, f"CRITICAL: backend {backend} not found{at}"
    fe = stats.frontends[frontend]
    servers = stats.servers.get(backend, {})
    act, bck = stats.up_counts.get(backend, (sum(1 for v in servers.values() if _up(v)), 0))
    up = sorted(s for s, v in servers.items() if _up(v))
    other = sorted(f"{s} {v}" for s, v in servers.items() if not _up(v))
    text = (f"frontend {frontend} {fe}{at}; backend {backend}: {act + bck}/{len(servers)} server(s) UP"
            f" ({', '.join(up) or 'none'})")
    if other:
        text += f"; not UP: {', '.join(other)}"
    perf = f"up={act + bck};;1:;0;{len(servers)} active_up={act};;;0 backup_up={bck};;;0"
    if fe != "OPEN" or act + bck == 0:
        state = CRITICAL
    elif act == 0:
        state, text = WARNING, text + "; only backup servers are UP"
    else:
        state = OK
    return state, f"{LABELS[state]}: {text} | {perf}"


def fetch(host: str, port: int, uri: str, timeout: float) -> str:
    """GET the stats endpoint (``host`` may be an IPv6 address)."""
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    with urllib.request.urlopen(f"http://{h}:{port}{uri}", timeout=timeout) as resp:  # noqa: S310 (http only)
        return resp.read().decode("utf-8", "replace")


def _to_json(st: Stats) -> str:
    return json.dumps({"frontends": st.frontends, "servers": st.servers,
                       "backup": {k: sorted(v) for k, v in st.backup.items()},
                       "up_counts": {k: list(v) for k, v in st.up_counts.items()}})


def _from_json(text: str) -> Stats:
    d = json.loads(text)
    return Stats(d["frontends"], d["servers"], {k: set(v) for k, v in d["backup"].items()},
                 {k: (v[0], v[1]) for k, v in d["up_counts"].items()})


def cache_dir() -> str:
    """``$TMPDIR/anycastlb-haproxy-stats-UID``: made 0700; refused unless it is ours and not a link."""
    path = os.path.join(tempfile.gettempdir(), f"anycastlb-haproxy-stats-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if st.st_uid != os.getuid() or not os.path.isdir(path) or os.path.islink(path) or st.st_mode & 0o077:
        raise OSError(f"stats cache {path} is not a private directory of uid {os.getuid()}")
    return path


def stats(host: str, port: int, uri: str, timeout: float, max_age: float, directory: str | None = None) -> Stats:
    """The endpoint's parsed statistics, shared between checks for ``max_age`` seconds."""
    if max_age <= 0:
        return parse(fetch(host, port, uri, timeout))
    d = directory or cache_dir()
    key = hashlib.sha256(f"{host}|{port}|{uri}".encode()).hexdigest()[:24]
    path = os.path.join(d, key + ".json")
    with open(os.path.join(d, key + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per window; the others wait and read it
        try:
            if time.time() - os.stat(path).st_mtime < max_age:
                with open(path, encoding="utf-8") as fh:
                    return _from_json(fh.read())
        except (OSError, ValueError, KeyError):
            pass
        st = parse(fetch(host, port, uri, timeout))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(_to_json(st))
        os.replace(tmp, path)
        return st


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="check_anycastlb_haproxy", description=__doc__.split("\n\n")[0])
    p.add_argument("-H", "--host", required=True, help="the node's management address")
    p.add_argument("-p", "--port", type=int, default=8404)
    p.add_argument("--uri", default="/metrics", help="Prometheus exporter or stats ';csv' URI")
    p.add_argument("--frontend", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--node", default="", help="the node's name, for the output")
    p.add_argument("-t", "--timeout", type=float, default=10.0)
    p.add_argument("--cache-s", type=float, default=10.0,
                   help="share one fetch of the endpoint between checks for this long (0: off)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the check; print one plugin line; return the plugin exit code."""
    args = build_parser().parse_args(argv)
    try:
        st = stats(args.host, args.port, args.uri, args.timeout, args.cache_s)
        state, line = evaluate(st, args.frontend, args.backend, args.node or args.host)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        state, line = CRITICAL, f"CRITICAL: HAProxy stats at {args.host}:{args.port}{args.uri} unreadable: {exc}"
    print(line)
    return state


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
