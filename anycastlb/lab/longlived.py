"""Long-lived connections held through fleet changes: what breaks, what stalls, what is closed.

``python -m anycastlb.lab.longlived SPEC.json|-`` (inside a lab namespace, usually the client)
opens ``per_target`` connections to each target and keeps each one busy: a request every
``interval`` seconds and its answer, on the same connection, until ``stop_file`` appears or
``duration`` passes (bounded: at most 400 connections, 15 minutes). Targets:

- ``{"kind": "tcp", "address", "port"}``: a raw tcp service whose backend echoes (the lab's
  responders send a banner, then echo every line);
- ``{"kind": "https", "address", "port", "host", "cafile"}``: HTTP/1.1 keep-alive over TLS.

Every event is stamped with ``time.monotonic()``, which every namespace shares, so a driver
puts its steps on the same axis. Kinds of event:

- ``broken``: a reset, a timeout (no answer in ``timeout`` s), or an answer that is wrong;
- ``closed``: the server closed the connection cleanly between two answers (a FIN, or an
  HTTP response with ``Connection: close``): what HAProxy does to its old worker's
  connections after a reload (soft stop, then ``hard-stop-after``). Counted apart;
- ``stall``: an answer that came, but more than ``stall`` s (default 2) after its request.

A connection that broke or was closed is opened again (a new ``conn`` number), so the
number held stays ``per_target`` per target. The program prints one JSON document:
``{"opened", "events": [{"t", "conn", "target", "kind", "detail", "ms"}], "requests"}``.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import yaml

from .program import LabProgram, read_spec

if TYPE_CHECKING:
    from .core import Lab

MAX_CONNECTIONS = 400
MAX_SECONDS = 900.0


class Closed(Exception):
    """The server closed the connection cleanly between answers."""


class _Conn:
    """One connection of one target: open, ask, read the answer."""

    def __init__(self, target: dict[str, Any], timeout: float) -> None:
        self.t, self.timeout = target, timeout
        fam = socket.AF_INET6 if ":" in target["address"] else socket.AF_INET
        raw = socket.socket(fam, socket.SOCK_STREAM)
        raw.settimeout(timeout)
        raw.connect((target["address"], int(target["port"])))
        self.buf = b""
        if target["kind"] == "https":
            ctx = ssl.create_default_context(cafile=target.get("cafile"))
            if not target.get("cafile"):
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            # an EOF without close_notify (a reset seen through TLS) raises instead of reading as a close
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname=target.get("host"),
                                                       suppress_ragged_eofs=False)
        else:
            self.sock = raw
            self._line()                           # the responder's banner

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed("FIN from the server")
        self.buf += data

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def ask(self, n: int) -> None:
        """One request and its whole answer; raises on anything else."""
        if self.t["kind"] == "tcp":
            msg = f"ping {n}".encode()
            self.sock.sendall(msg + b"\n")
            line = self._line()
            if line.strip() != msg:
                raise ValueError(f"echo {line[:60]!r}")
            return
        host = self.t.get("host") or self.t["address"]
        self.sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: anycastlb-longlived\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip().lower() for k, _, v in (h.partition(":") for h in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._more()
        self.buf = self.buf[length:]
        if status >= 500:
            raise ValueError(f"status {status}")
        if headers.get("connection") == "close":
            raise Closed("Connection: close")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Hold the connections until the stop file or the duration; every event on the shared clock."""
    targets = spec["targets"]
    per = int(spec.get("per_target", 10))
    if per * len(targets) > MAX_CONNECTIONS:
        raise SystemExit(f"at most {MAX_CONNECTIONS} connections")
    interval, timeout = float(spec.get("interval", 0.5)), float(spec.get("timeout", 10.0))
    stall = float(spec.get("stall", 2.0))
    end = time.monotonic() + min(float(spec.get("duration", 60)), MAX_SECONDS)
    stop, ready = spec.get("stop_file"), spec.get("ready_file")
    events: list[dict[str, Any]] = []
    counts = {"requests": 0, "opened": 0}
    lock = threading.Lock()
    up = threading.Barrier(per * len(targets) + 1)
    next_id = iter(range(1, 1 << 30))

    def event(conn: int, name: str, kind: str, detail: str, ms: float | None = None) -> None:
        with lock:
            events.append({"t": round(time.monotonic(), 4), "conn": conn, "target": name, "kind": kind,
                           "detail": detail[:160], "ms": None if ms is None else round(ms, 1)})

    def done() -> bool:
        return time.monotonic() >= end or bool(stop and os.path.exists(stop))

    def hold(target: dict[str, Any]) -> None:
        name = target.get("name") or f"{target['kind']} {target['address']} {target['port']}"
        first = True
        while not done():
            with lock:
                cid = next(next_id)
            try:
                c = _Conn(target, timeout)
            except OSError as exc:
                event(cid, name, "broken", f"connect: {type(exc).__name__}: {exc}")
                c = None
            if first:
                first = False
                try:
                    up.wait(timeout + 5)
                except threading.BrokenBarrierError:
                    pass
            if c is None:
                time.sleep(0.5)
                continue
            with lock:
                counts["opened"] += 1
            n = 0
            try:
                while not done():
                    t0 = time.monotonic()
                    c.ask(n)
                    ms = (time.monotonic() - t0) * 1000
                    with lock:
                        counts["requests"] += 1
                    if ms > stall * 1000:
                        event(cid, name, "stall", f"answer {n} after {ms:.0f} ms", ms)
                    n += 1
                    time.sleep(max(0.0, interval - (time.monotonic() - t0)))
            except Closed as exc:
                event(cid, name, "closed", f"after {n} answers: {exc}")
            except (OSError, ValueError) as exc:
                kind = "timeout" if isinstance(exc, (socket.timeout, TimeoutError)) else type(exc).__name__
                event(cid, name, "broken", f"after {n} answers: {kind}: {exc}")
            finally:
                c.close()

    threads = [threading.Thread(target=hold, args=(t,), daemon=True) for t in targets for _ in range(per)]
    for th in threads:
        th.start()
    try:
        up.wait(timeout + 10)
    except threading.BrokenBarrierError:
        pass
    if ready:
        with open(ready, "w", encoding="utf-8") as fh:
            fh.write(str(time.monotonic()))
    for th in threads:
        th.join(max(0.0, end - time.monotonic()) + timeout + 5)
    with lock:
        return {"opened": counts["opened"], "requests": counts["requests"],
                "events": sorted(events, key=lambda e: e["t"])}


def tally(events: list[dict[str, Any]], since: float, until: float) -> dict[str, int]:
    """How many ``broken``, ``closed`` and ``stall`` events fall in [since, until)."""
    out = {"broken": 0, "closed": 0, "stall": 0}
    for e in events:
        if since <= e["t"] < until:
            out[e["kind"]] += 1
    return out


def edit_catalog(lab: "Lab", change: Callable[[dict[str, Any]], None]) -> None:
    """Change the catalog the master reads (a YAML round trip: its comments go)."""
    path = Path(lab.catalog)
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def set_steering(lab: "Lab", cluster: str, on: bool) -> None:
    """``steering`` of ``cluster`` in the catalog the master reads, applied to its nodes."""
    from .fleet import apply

    def change(d: dict[str, Any]) -> None:
        d["clusters"][cluster]["steering"] = on
    edit_catalog(lab, change)
    nodes = yaml.safe_load(Path(lab.catalog).read_text())["clusters"][cluster]["nodes"]
    for n in nodes:
        apply(lab, n)
    for n in nodes:
        have = lab.exec(n, ["nft", "list", "table", "ip", "anycastlb_steer"]).returncode == 0
        if have != on:
            raise RuntimeError(f"{n}: the steering tables are {'missing' if on else 'still loaded'}")


def counters(lab: "Lab", nodes: Iterable[str]) -> dict[str, int]:
    """Packets steered away and peers' copies dropped, summed over ``nodes`` (both families),
    from the counters of their steering rules."""
    out = {"steered": 0, "copies_dropped": 0}
    for n in nodes:
        for fam in ("ip", "ip6"):
            r = lab.exec(n, ["nft", "-j", "list", "table", fam, "anycastlb_steer"])
            if r.returncode != 0:
                continue
            for item in json.loads(r.stdout)["nftables"]:
                rule = item.get("rule")
                if not rule:
                    continue
                exprs = rule["expr"]
                cnt = next((e["counter"]["packets"] for e in exprs if "counter" in e), None)
                if cnt is None:
                    continue
                out["steered" if any("dup" in e for e in exprs) else "copies_dropped"] += cnt
    return out



@dataclass
class Holder:
    """The holder in lab host ``source``, started and stopped from the host side."""

    lab: "Lab"
    source: str
    targets: list[dict[str, Any]]
    per_target: int = 10
    interval: float = 0.5
    duration: float = 300.0
    result: dict[str, Any] = field(default_factory=dict)
    _prog: LabProgram | None = None

    def start(self, wait: float = 60.0) -> "Holder":
        """Open every connection; return once all are open and answered once (the ready file)."""
        self._prog = LabProgram(self.lab, self.source, "anycastlb.lab.longlived", "holder")
        self._prog.start({"targets": self.targets, "per_target": self.per_target, "interval": self.interval,
                          "duration": self.duration}, wait)
        return self

    def stop(self) -> dict[str, Any]:
        """Close every connection; the result (opened, requests, events)."""
        assert self._prog is not None, "start() first"
        self.result = self._prog.stop(60)
        return self.result

    def __enter__(self) -> "Holder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._prog is not None and self._prog.running:
            self.stop()


def campus_targets(lab: "Lab") -> list[dict[str, Any]]:
    """The campus catalog's long-lived targets: raw tcp through imap, HTTP keep-alive over TLS to
    www on IPv4 and IPv6 (the lab CA's certificate verified for www.example.org)."""
    cafile = str(sorted((lab.statedir / "pki").glob("*.crt"))[0])
    return [{"kind": "tcp", "address": "192.0.2.20", "port": 143, "name": "imap tcp v4"},
            {"kind": "https", "address": "192.0.2.10", "port": 443, "host": "www.example.org",
             "cafile": cafile, "name": "www https v4"},
            {"kind": "https", "address": "2001:db8:1::10", "port": 443, "host": "www.example.org",
             "cafile": cafile, "name": "www https v6"}]


def main(argv: list[str] | None = None) -> int:
    """``python -m anycastlb.lab.longlived SPEC.json|-``: hold, then print the result as JSON."""
    print(json.dumps(run(read_spec(sys.argv[1:] if argv is None else argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
