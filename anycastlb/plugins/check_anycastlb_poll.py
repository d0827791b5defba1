#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""Every HAProxy frontend, announcer and route reflector check of the fleet in one process.

One run per check interval: HAProxy's stats CSV fetched once per LB node (concurrently),
BIRD's ``show route all`` (and ``show protocols all`` when route reflectors are checked)
read once on the listener, every check evaluated by the same functions the single-check
plugins use (``check_anycastlb_haproxy``, ``check_anycastlb_bird``: same states, same
output), and every result handed to Icinga2 as a passive check result
(``PROCESS_SERVICE_CHECK_RESULT`` lines written to an external command pipe).

The checks come from a JSON spec the Icinga2 renderer writes beside the objects
(``--spec``). The poller's own state: OK when every result was handed over, CRITICAL when
the command pipe could not be written (then no service got a fresh result; this check is
what says so), UNKNOWN when the spec is unreadable.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def sibling(name: str) -> ModuleType:
    """A plugin deployed beside this one (``name``, or ``name.py`` in the source tree)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, name), os.path.join(here, name + ".py")):
        if os.path.isfile(path):
            loader = importlib.machinery.SourceFileLoader(f"anycastlb_poll_{name}", path)
            spec = importlib.util.spec_from_loader(loader.name, loader)
            assert spec is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[loader.name] = mod   # dataclasses look their module up there
            loader.exec_module(mod)
            return mod
    raise ImportError(f"{name} not found beside {here}")


hap = sibling("check_anycastlb_haproxy")
bird = sibling("check_anycastlb_bird")

Result = tuple[str, str, int, str]   # host, service, state, output line


def haproxy_results(sources: list[dict[str, Any]], timeout: float) -> list[Result]:
    """One stats fetch per LB node (in parallel), then each of its frontend checks."""
    def one(src: dict[str, Any]) -> list[Result]:
        try:
            st = hap.parse(hap.fetch(src["address"], src["port"], src["uri"], timeout))
        except (OSError, urllib.error.URLError, ValueError) as exc:
            line = f"CRITICAL: HAProxy stats at {src['address']}:{src['port']}{src['uri']} unreadable: {exc}"
            return [(c["host"], c["service"], CRITICAL, line) for c in src["checks"]]
        return [(c["host"], c["service"], *hap.evaluate(st, c["frontend"], c["backend"], src["node"]))
                for c in src["checks"]]
    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(sources))) as pool:
        return [r for rs in pool.map(one, sources) for r in rs]


def _net(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.split("-")[0], strict=False))
    except ValueError:
        return text


def bird_results(spec: dict[str, Any], birdc: str, timeout: float) -> list[Result]:
    """``show route all`` once (and ``show protocols all`` once), then every announcer and RR check."""
    ann, rrs = spec.get("announcers", []), spec.get("rr_sessions", [])
    if not ann and not rrs:
        return []
    socket, nodes = spec["socket"], bird.node_map(spec.get("speakers", []))
    try:
        routes = bird.parse_routes(bird.birdc(birdc, socket, "show route all", timeout))
        protocols = bird.parse_protocols(bird.birdc(birdc, socket, "show protocols all", timeout)) if rrs else []
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        line = f"UNKNOWN: cannot read BIRD at {socket}: {exc}"
        return [(c["host"], c["service"], UNKNOWN, line) for c in (*ann, *rrs)]
    by_net: dict[str, list[Any]] = {}
    for r in routes:   # grouped once: each prefix then looks at its own paths only (linear, not n²)
        by_net.setdefault(_net(r.net), []).append(r)
    out: list[Result] = []
    for c in ann:
        mine = by_net.get(_net(c["prefix"]), [])
        out.append((c["host"], c["service"], *bird.evaluate_announcers(c["prefix"], mine, c["expected"], nodes)))
    for c in rrs:
        out.append((c["host"], c["service"],
                    *bird.evaluate_rr(c["rr"], protocols, routes, c["neighbors"], c["expected"], nodes)))
    return out


def command_lines(results: list[Result], now: int) -> str:
    """``PROCESS_SERVICE_CHECK_RESULT`` lines (Icinga2's external command syntax), one per
    result, stamped ``now`` (Icinga2 takes it as the check's time)."""
    lines = []
    for host, service, state, output in results:
        if any(c in f"{host}{service}" for c in ";\n\r"):
            raise ValueError(f"a host or service name cannot be passed on: {host!r} {service!r}")
        text = " ".join(output.splitlines())
        lines.append(f"[{now}] PROCESS_SERVICE_CHECK_RESULT;{host};{service};{state};{text}\n")
    return "".join(lines)


def submit(path: str, text: str) -> None:
    """Write the commands to Icinga2's pipe (refused at once when no Icinga2 reads it)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND)
    try:
        os.set_blocking(fd, True)
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def run(spec: dict[str, Any], command_file: str, birdc: str = "birdc", timeout: float = 10.0) -> tuple[int, str]:
    """Evaluate every check of ``spec``, hand the results over; the poller's own state and line."""
    t0 = time.monotonic()
    # Results carry the time their sources were read, not the time they were handed in: at
    # 1,000 services a run takes about 10 s, and a result stamped at its end looked newer
    # than what it had read (a round forced meanwhile took a run's stale announcers for its own).
    read_at = int(time.time())
    with ThreadPoolExecutor(max_workers=2) as pool:
        fut_h = pool.submit(haproxy_results, spec.get("haproxy", []), timeout)
        fut_b = pool.submit(bird_results, spec.get("bird") or {}, birdc, timeout)
        results = fut_h.result() + fut_b.result()
    counts = {label: 0 for label in LABELS.values()}
    for r in results:
        counts[LABELS.get(r[2], "UNKNOWN")] += 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no checks"
    perf = " ".join(f"{k.lower()}={v};;;0" for k, v in counts.items()) + f" seconds={time.monotonic() - t0:.3f}s"
    try:
        submit(command_file, command_lines(results, read_at))
    except (OSError, ValueError) as exc:
        return CRITICAL, f"CRITICAL: {len(results)} results not handed to Icinga2 ({command_file}: {exc}) | {perf}"
    return OK, (f"OK: {len(results)} results handed to Icinga2 ({summary}); HAProxy stats of "
                f"{len(spec.get('haproxy', []))} node(s) and BIRD read once each | {perf}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="check_anycastlb_poll", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="the JSON spec the Icinga2 renderer writes")
    p.add_argument("--command-file", required=True, help="Icinga2's external command pipe")
    p.add_argument("--birdc", default="birdc")
    p.add_argument("-t", "--timeout", type=float, default=10.0, help="per HAProxy fetch and birdc call")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the poller; print one plugin line; return the plugin exit code."""
    args = build_parser().parse_args(argv)
    try:
        with open(args.spec, encoding="utf-8") as fh:
            spec = json.load(fh)
    except (OSError, ValueError) as exc:
        print(f"UNKNOWN: cannot read the poll spec {args.spec}: {exc}")
        return UNKNOWN
    state, line = run(spec, args.command_file, args.birdc, args.timeout)
    print(line)
    return state


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
