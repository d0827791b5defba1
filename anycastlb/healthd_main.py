"""The anycastlb-healthd daemon: watchers, route changes, signals, state file.

Everything with side effects lives here; decisions come from
:mod:`anycastlb.healthd`. One asyncio loop runs all watchers:

- HAProxy watches are grouped by stats socket: one ``show stat`` query per
  group, whatever the number of VIPs, when HAProxy's ring of state changes
  tells of one (at most every interval) and every reconcile period (every
  interval without the ring). The HAProxy master's pidfd is registered with
  the loop, so its death withdraws at once.
- tcp/http watches are asyncio probes with rise/fall.
- Every health change wakes the reconciler, which runs one ``ip -batch``
  and re-reads the table (the kernel is the truth for "announced").

Signals: SIGHUP reloads the config (a bad one is refused, the old one
stays), SIGUSR1 re-reads the drain file, SIGTERM/SIGINT withdraw every
route of ours and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable, Sequence

from anycastlb import probes

from anycastlb import httpstatus
from anycastlb.healthd import (
    DEFAULT_CONFIG,
    STAT_COMMAND,
    Announcement,
    Config,
    ConfigError,
    Decision,
    DnsWatch,
    HaproxyWatch,
    HttpWatch,
    KerberosWatch,
    RiseFall,
    TcpWatch,
    decide,
    haproxy_verdict,
    load_config,
    parse_event,
    parse_ip_routes,
    parse_show_stat,
    plan_routes,
)

log = logging.getLogger("anycastlb.healthd")

DRAIN_POLL_S = 0.2  # the drain file is also re-read at once on SIGUSR1
RESYNC_S = 60.0  # re-read the kernel table (repairs a flushed table)
STATS_FAST_S = 0.005  # longest the loop blocks on a stats socket answer
RETRY_S = 1.0  # a failed route change is retried this often

# (prefix, ok, reason, hard)
Result = tuple[str, bool, str, bool]
Report = Callable[[list[Result]], None]


# ----------------------------------------------------------------- kernel


def ip_cmd(args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ip`` (in this process's network namespace)."""
    return subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=5, check=False)


def read_table(table: int, proto: int) -> set[str]:
    """Our prefixes currently in the kernel table."""
    out: set[str] = set()
    for fam, v6 in (("-4", False), ("-6", True)):
        res = ip_cmd(["-j", fam, "route", "show", "table", str(table), "proto", str(proto)])
        if res.returncode != 0 and "table does not exist" in res.stderr:
            continue  # a table that never held a route (fresh boot or namespace)
        if res.returncode != 0:
            raise OSError(f"ip route show table {table}: {res.stderr.strip()}")
        out |= parse_ip_routes(res.stdout, v6)
    return out


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory."""
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".healthd.", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ----------------------------------------------------------------- probes


async def _connect(sock: socket.socket, addr: Any, timeout: float) -> None:
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, addr), timeout)


async def tcp_probe(w: TcpWatch) -> tuple[bool, str, bool]:
    """One TCP connect: ``(ok, reason, hard)``; refused is a hard failure."""
    fam = socket.AF_INET6 if ":" in w.address else socket.AF_INET
    target = f"tcp {w.address}:{w.port}"
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            await _connect(s, (w.address, w.port), w.timeout_ms / 1000)
        except ConnectionRefusedError:
            return False, f"{target}: connection refused", True
        except asyncio.TimeoutError:
            return False, f"{target}: no answer in {w.timeout_ms} ms", False
        except OSError as exc:
            return False, f"{target}: {exc.strerror or exc}", False
    return True, f"{target} accepts", False


async def http_probe(w: HttpWatch) -> tuple[bool, str, bool]:
    """One HTTP/1.0 GET: ok iff the status is ``expect``."""
    fam = socket.AF_INET6 if ":" in w.address else socket.AF_INET
    loop = asyncio.get_running_loop()
    target = f"http {w.address}:{w.port}{w.path}"
    host = w.host or (f"[{w.address}]" if fam == socket.AF_INET6 else w.address)
    req = f"GET {w.path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: anycastlb-healthd\r\nConnection: close\r\n\r\n"

    async def exchange(s: socket.socket) -> bytes:
        await loop.sock_connect(s, (w.address, w.port))
        await loop.sock_sendall(s, req.encode())
        buf = b""
        while b"\r\n" not in buf and len(buf) < 4096:
            chunk = await loop.sock_recv(s, 4096)
            if not chunk:
                break
            buf += chunk
        return buf

    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            head = await asyncio.wait_for(exchange(s), w.timeout_ms / 1000)
        except ConnectionRefusedError:
            return False, f"{target}: connection refused", True
        except asyncio.TimeoutError:
            return False, f"{target}: no answer in {w.timeout_ms} ms", False
        except OSError as exc:
            return False, f"{target}: {exc.strerror or exc}", False
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, f"{target}: not an HTTP answer", False
    code = int(parts[1])
    if not httpstatus.allows(httpstatus.parse(w.expect), code):
        return False, f"{target}: status {code}, expected {w.expect}", False
    return True, f"{target}: status {code}", False


async def _exchange(w: DnsWatch | KerberosWatch, proto: str, message: bytes,
                    verdict: Callable[[bytes], tuple[bool, str]]) -> tuple[bool, str, bool]:
    """Send ``message`` over udp (one datagram; answers that do not match are skipped) or tcp
    (RFC 4120/1035 length prefix: 4 bytes for Kerberos, 2 for DNS) and judge the answer."""
    fam = socket.AF_INET6 if ":" in w.address else socket.AF_INET
    loop = asyncio.get_running_loop()
    target = f"{w.type} {w.address}:{w.port}/{proto}"
    prefix = 4 if isinstance(w, KerberosWatch) else 2

    async def udp(s: socket.socket) -> tuple[bool, str]:
        await loop.sock_connect(s, (w.address, w.port))
        await loop.sock_sendall(s, message)
        while True:
            ok, why = verdict(await loop.sock_recv(s, 65535))
            if ok or "another query" not in why:
                return ok, why

    async def tcp(s: socket.socket) -> tuple[bool, str]:
        await loop.sock_connect(s, (w.address, w.port))
        await loop.sock_sendall(s, len(message).to_bytes(prefix, "big") + message)
        buf = b""
        while len(buf) < prefix or len(buf) < prefix + int.from_bytes(buf[:prefix], "big"):
            chunk = await loop.sock_recv(s, 65535)
            if not chunk:
                break
            buf += chunk
        return verdict(buf[prefix:prefix + int.from_bytes(buf[:prefix], "big")] if len(buf) >= prefix else b"")

    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(fam, kind) as s:
        s.setblocking(False)
        try:
            ok, why = await asyncio.wait_for((udp if proto == "udp" else tcp)(s), w.timeout_ms / 1000)
        except ConnectionRefusedError:
            return False, f"{target}: connection refused", True
        except asyncio.TimeoutError:
            return False, f"{target}: no answer in {w.timeout_ms} ms", False
        except OSError as exc:
            return False, f"{target}: {exc.strerror or exc}", False
    return ok, f"{target}: {why}", False


async def dns_probe(w: DnsWatch) -> tuple[bool, str, bool]:
    """One DNS query over udp: ok iff the answer is NOERROR."""
    _qid, query = probes.dns_query(w.name, w.qtype)
    return await _exchange(w, "udp", query, lambda answer: probes.dns_verdict(query, answer))


async def kerberos_probe(w: KerberosWatch) -> tuple[bool, str, bool]:
    """One AS-REQ: ok iff a KDC of the realm answers it."""
    return await _exchange(w, w.protocol, probes.as_req(w.realm), lambda answer: probes.krb_verdict(w.realm, answer))


_PROBES: dict[type, Callable[..., Awaitable[tuple[bool, str, bool]]]] = {}


def _stats_fast(s: socket.socket, budget: float) -> tuple[list[bytes], bool]:
    """Blocking reads for at most ``budget`` seconds: ``(chunks, complete)``."""
    chunks: list[bytes] = []
    end = time.monotonic() + budget
    try:
        while True:
            s.settimeout(max(end - time.monotonic(), 1e-4))
            chunk = s.recv(65536)
            if not chunk:
                return chunks, True
            chunks.append(chunk)
    except (TimeoutError, BlockingIOError):
        return chunks, False


async def stats_query(path: str, timeout: float, fast: float = STATS_FAST_S) -> str:
    """Send ``show stat`` to an HAProxy stats socket and read the answer.

    A healthy HAProxy answers within a millisecond, so the answer is first
    awaited *blocking* for at most ``fast`` seconds: that costs a third of
    the CPU of an event-loop round trip per poll (measured). A slow HAProxy
    falls through to a non-blocking wait bounded by ``timeout``.
    """
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(fast)
        s.connect(path)  # a Unix connect completes at once (or is refused)
        s.sendall(STAT_COMMAND.encode())
        chunks, complete = _stats_fast(s, fast)
        if not complete:
            s.setblocking(False)

            async def rest() -> None:
                while chunk := await loop.sock_recv(s, 65536):
                    chunks.append(chunk)

            await asyncio.wait_for(rest(), max(timeout - fast, 0.001))
    return b"".join(chunks).decode("utf-8", "replace")


_PROBES.update({TcpWatch: tcp_probe, HttpWatch: http_probe, DnsWatch: dns_probe, KerberosWatch: kerberos_probe})


# --------------------------------------------------------------- watchers


class PidTracker:
    """Follows the process named by a pidfile through a pidfd.

    The pidfd is registered with the event loop, so the process's exit calls
    ``on_exit`` at once (no polling). :meth:`refresh` (called before every
    check) re-opens the pidfd when the pidfile was rewritten (a restart).
    """

    def __init__(self, pidfile: str, what: str, on_exit: Callable[[str], None]):
        self.pidfile = pidfile
        self.what = what
        self.on_exit = on_exit
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.dead_reason: str | None = f"{what} pid not read yet"
        self._key: tuple[int, int] | None = None
        self._checked = False

    def _read_pid(self) -> int | None:
        try:
            with open(self.pidfile, encoding="ascii") as f:
                text = f.readline().strip()
            return int(text) if text.isdigit() else None
        except OSError:
            return None

    def close(self) -> None:
        """Stop watching (the loop forgets the fd)."""
        if self.pidfd is not None:
            asyncio.get_running_loop().remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

    def _exited(self) -> None:
        pid = self.pid
        self.close()
        self.dead_reason = f"{self.what} (pid {pid}) exited"
        log.info("%s", self.dead_reason)
        self.on_exit(self.dead_reason)

    def refresh(self) -> str | None:
        """Re-open the pidfd if the pidfile changed; the reason the process is not alive, or None."""
        try:
            st = os.stat(self.pidfile)
            key: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except OSError:
            key = None
        if key == self._key and self._checked:
            return self.dead_reason
        self._key, self._checked = key, True
        pid = self._read_pid() if key else None
        if pid == self.pid and self.pidfd is not None:
            return None  # pidfile rewritten with the same, living pid (e.g. a reload)
        self.close()
        return self._follow(pid, f"no {self.what} pid in {self.pidfile}",
                            f"{self.what} pid {pid} from {self.pidfile} is not running",
                            f"watching {self.what} pid {pid} ({self.pidfile})")

    def _follow(self, pid: int | None, missing: str, gone: str, watching: str) -> str | None:
        """Hold a pidfd on ``pid`` and withdraw when it exits; the reason it cannot, or None."""
        self.pid = pid
        if pid is None:
            self.dead_reason = missing
            return missing
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.dead_reason = gone
            return gone
        asyncio.get_running_loop().add_reader(self.pidfd, self._exited)
        self.dead_reason = None
        log.info("%s", watching)
        return None


class UnitTracker(PidTracker):
    """Follows a systemd service's main process (its ``MainPID``) through a pidfd.

    The pidfd withdraws the moment the process dies; while none is held (dead, restarting,
    not started yet) every :meth:`refresh` asks systemd for the unit's MainPID again.
    """

    def __init__(self, unit: str, on_exit: Callable[[str], None]):
        super().__init__(f"unit {unit}", unit, on_exit)
        self.unit = unit

    def _read_pid(self) -> int | None:
        try:
            r = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", self.unit], capture_output=True,
                               text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = r.stdout.strip()
        return int(text) if r.returncode == 0 and text.isdigit() and int(text) > 0 else None

    def refresh(self) -> str | None:
        """The reason the unit's main process is not alive, or None (a held pidfd needs no question)."""
        if self.pidfd is not None:
            return None
        pid = self._read_pid()
        return self._follow(pid, f"{self.unit} has no main process", f"{self.unit} main pid {pid} is not running",
                            f"watching {self.unit} main pid {pid}")


class ProbeWatcher:
    """A tcp or http watch for one prefix (and its server's process: a pidfile's, or a unit's MainPID)."""

    def __init__(self, ann: Announcement):
        self.ann = ann
        self.watch = ann.watch
        assert isinstance(self.watch, (TcpWatch, HttpWatch, DnsWatch, KerberosWatch))
        self._report: Report | None = None
        self.pid: PidTracker | None = (
            PidTracker(self.watch.pidfile, "server", self._on_exit) if self.watch.pidfile
            else UnitTracker(self.watch.unit, self._on_exit) if self.watch.unit else None)

    def _on_exit(self, reason: str) -> None:
        if self._report:
            self._report([(self.ann.prefix, False, reason, True)])

    async def probe(self) -> list[Result]:
        """Run one check."""
        if self.pid and (dead := self.pid.refresh()):
            return [(self.ann.prefix, False, dead, True)]
        fn = _PROBES[type(self.watch)]
        ok, reason, hard = await fn(self.watch)
        if self.pid and self.pid.dead_reason:  # died while we were checking
            return [(self.ann.prefix, False, self.pid.dead_reason, True)]
        return [(self.ann.prefix, ok, reason, hard)]

    async def run(self, report: Report) -> None:
        """Check forever at ``interval_ms``."""
        self._report = report
        interval = getattr(self.watch, "interval_ms", 1000) / 1000  # every watch run here has one
        try:
            while True:
                start = time.monotonic()
                report(await self.probe())
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - start)))
        finally:
            self._report = None
            if self.pid:
                self.pid.close()


#: How long a stats socket that answers too slowly keeps the last verdict. A loaded
#: HAProxy may answer ``show stat`` late; withdrawing every VIP of the node for that would
#: turn a slow node into an outage. A dead HAProxy is still seen at once (pidfd, refused
#: connection), and a socket that stays silent longer than this is a failure.
STATS_GRACE_S = 3.0

#: At most this share of the time goes into asking HAProxy for its stats. With a few dozen
#: services an answer takes a millisecond and the watch's interval rules; at 1,000 services
#: ``show stat`` is about 600 KB and 30–70 ms of HAProxy's and healthd's CPU, and a poll every
#: 100 ms on each LB node would take a small machine's every core (measured: answers later than
#: the timeout, every VIP withdrawn and announced again and again).
STATS_DUTY = 0.1

#: The stats timeout grows with the last answer's duration (four times it), up to this.
STATS_TIMEOUT_MAX_S = 5.0

#: The longest a slow stats socket stretches the poll: with the grace of three periods, a
#: HAProxy that lives but stays silent is withdrawn within about 15 s.
STATS_PERIOD_MAX_S = 5.0

#: How often healthd asks again for a ring HAProxy said it does not have (a HAProxy not yet
#: reloaded with anycastlb's config); meanwhile the stats are read every interval.
RING_RETRY_S = 10.0


class EventStream:
    """HAProxy's ring of state changes, followed on its stats socket (``show events <ring> -w``).

    Opened again before every stats read, so the read sees everything before the opening and
    the stream everything after: the ring's older lines (its history, sent first) are skipped
    by their time. Closing it is what lets an old worker leave after a reload (a waiting CLI
    session keeps a worker alive), and a reload's ``Proxy … stopped`` lines wake the reader.
    """

    def __init__(self, path: str, ring: str):
        self.path, self.ring = path, ring
        self.sock: socket.socket | None = None
        self.since = 0.0   # time.time() when the stream was opened: older lines are history
        self.buf = b""
        self.missing = ""  # HAProxy's answer when it has no such ring
        self.retry_at = 0.0

    @property
    def following(self) -> bool:
        """Whether the stream is open (HAProxy tells of changes as they happen)."""
        return self.sock is not None

    def open(self) -> None:
        """(Re)connect and ask for the ring; a refused connection leaves the stream closed."""
        self.close()
        if self.missing and time.monotonic() < self.retry_at:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        since = time.time()
        try:
            s.connect(self.path)  # a Unix connect completes at once (or fails)
            s.send(f"show events {self.ring} -w\n".encode())
        except OSError:
            s.close()
            return
        self.sock, self.since, self.buf = s, since, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def wait(self, deadline: float) -> bool | None:
        """Until ``deadline`` (monotonic): True when HAProxy logs a change (or ends the stream: the
        worker left), False at the deadline, None when HAProxy answers it has no such ring."""
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        answer: list[str] = []  # lines that are not events: HAProxy's refusal
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), left)
            except asyncio.TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                if not answer:
                    return True
                self._refused(" ".join(answer))
                return None
            *lines, self.buf = (self.buf + chunk).split(b"\n")
            new = False
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if (event := parse_event(line)) is None:
                    if line.strip():  # the CLI ends an answer with an empty line
                        answer.append(line.strip())
                elif event[0] >= self.since:
                    log.debug("haproxy %s: %s", self.ring, event[1])
                    new = True
            if new:
                self._following()
                return True
        self._following()
        return False

    def _refused(self, answer: str) -> None:
        if not self.missing:
            log.warning("haproxy at %s has no ring %s (%s): its stats are read every interval",
                        self.path, self.ring, answer)
        self.missing, self.retry_at = answer, time.monotonic() + RING_RETRY_S

    def _following(self) -> None:
        if self.missing:
            log.info("haproxy at %s: following its ring %s", self.path, self.ring)
            self.missing = ""


class HaproxyWatcher:
    """All haproxy watches that share one stats socket and pidfile."""

    def __init__(self, anns: list[Announcement]):
        self.anns = anns
        first = anns[0].watch
        assert isinstance(first, HaproxyWatch)
        self.socket = first.stats_socket
        self.interval = min(a.watch.interval_ms for a in anns) / 1000  # type: ignore[union-attr]
        self.timeout = min(a.watch.timeout_ms for a in anns) / 1000  # type: ignore[union-attr]
        self.reconcile = max(self.interval, min(a.watch.reconcile_ms for a in anns) / 1000)  # type: ignore[union-attr]
        self.ring = next((a.watch.events for a in anns if a.watch.events), "")  # type: ignore[union-attr]
        self.pid = PidTracker(first.pidfile, "haproxy", self._on_exit)
        self._report: Report | None = None
        self._last_good: tuple[float, list[Result]] | None = None
        self._took = 0.0  # how long the last answer took, s

    def period(self, following: bool = False) -> float:
        """Seconds from one poll's start to the next: the interval (the reconcile period while
        ``following`` HAProxy's ring of changes), or longer when the answers are slow (at most
        :data:`STATS_DUTY` of the time spent asking)."""
        return max(self.reconcile if following else self.interval, min(self._took / STATS_DUTY, STATS_PERIOD_MAX_S))

    def budget(self) -> tuple[float, float]:
        """``(timeout, grace)``: the watch's, or more when HAProxy's answers are slow (a
        large config on a busy node), so a slow answer is not taken for a failure."""
        timeout = min(max(self.timeout, 4 * self._took), STATS_TIMEOUT_MAX_S)
        return timeout, max(STATS_GRACE_S, 3 * self.period())

    def _all(self, ok: bool, reason: str, hard: bool) -> list[Result]:
        return [(a.prefix, ok, reason, hard) for a in self.anns]

    def _on_exit(self, reason: str) -> None:
        """The HAProxy master is gone: withdraw now, not at the next poll."""
        if self._report:
            self._report(self._all(False, reason, True))

    async def probe(self) -> list[Result]:
        """Check the pid and query the stats socket once."""
        if dead := self.pid.refresh():
            return self._all(False, dead, True)
        timeout, grace = self.budget()
        asked = time.monotonic()
        try:
            rows = parse_show_stat(await stats_query(self.socket, timeout))
            self._took = time.monotonic() - asked
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            return self._all(False, f"stats socket {self.socket}: {exc.strerror}", True)
        except asyncio.TimeoutError:
            # at least as slow as the timeout: the next poll waits longer, and later (a node
            # busy reloading a large config answers in seconds, and must not flap every VIP)
            self._took = max(self._took, timeout)
            slow = f"stats socket {self.socket}: no answer in {timeout * 1000:.0f} ms"
            if self._last_good and time.monotonic() - self._last_good[0] < grace:
                return [(p, ok, f"{reason} ({slow}; last answer kept)", hard)
                        for p, ok, reason, hard in self._last_good[1]]
            return self._all(False, slow, False)
        except (OSError, ValueError) as exc:
            return self._all(False, f"stats socket {self.socket}: {exc}", False)
        if self.pid.dead_reason:  # died while we were asking
            return self._all(False, self.pid.dead_reason, True)
        out: list[Result] = []
        for a in self.anns:
            w = a.watch
            assert isinstance(w, HaproxyWatch)
            ok, reason = haproxy_verdict(rows, w.frontends, w.backends)
            out.append((a.prefix, ok, reason, False))
        self._last_good = (time.monotonic(), out)
        return out

    async def run(self, report: Report) -> None:
        """Read the stats forever: when HAProxy's ring tells of a change (at most every interval),
        else every reconcile period (every interval while HAProxy has no such ring). The pidfd
        callback reports a death between reads."""
        self._report = report
        stream = EventStream(self.socket, self.ring) if self.ring else None
        try:
            while True:
                start = time.monotonic()
                if stream:
                    stream.open()  # before the read: what changes after it is in the stream
                report(await self.probe())
                if stream and stream.following:  # until a change, or the reconcile period
                    await stream.wait(start + self.period(following=True))
                # a change (or no ring: HAProxy refused it) reads again after the interval, no sooner
                await asyncio.sleep(max(0.0, start + self.period() - time.monotonic()))
        finally:
            if stream:
                stream.close()
            self._report = None
            self.pid.close()


def build_watchers(config: Config) -> list[HaproxyWatcher | ProbeWatcher]:
    """One watcher per tcp/http prefix, one per HAProxy (pidfile, socket)."""
    groups: dict[tuple[str, str], list[Announcement]] = {}
    out: list[HaproxyWatcher | ProbeWatcher] = []
    for ann in config.announcements:
        w = ann.watch
        if isinstance(w, HaproxyWatch):
            groups.setdefault((w.pidfile, w.stats_socket), []).append(ann)
        elif isinstance(w, (TcpWatch, HttpWatch, DnsWatch, KerberosWatch)):
            out.append(ProbeWatcher(ann))
    out.extend(HaproxyWatcher(anns) for anns in groups.values())
    return out


# ------------------------------------------------------------------ agent


class Agent:
    """Keeps the kernel table equal to the set of healthy prefixes."""

    def __init__(self, config_path: str):
        self.config_path = config_path
        self.config = load_config(config_path)
        self.installed: set[str] = set()
        self.machines: dict[str, RiseFall] = {}
        self.health: dict[str, tuple[bool, str]] = {}
        self.drained = False
        self.state: dict[str, dict[str, object]] = {}
        self._last_state_text = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._last_failure = 0.0
        self._last_sync = 0.0
        self._hup = False
        self._tick_handle: asyncio.TimerHandle | None = None

    # -- health bookkeeping
    def _reset_machines(self) -> None:
        """New state machines; a prefix already in the table starts healthy (no flap on restart)."""
        machines: dict[str, RiseFall] = {}
        for ann in self.config.announcements:
            w = ann.watch
            rise, fall = (getattr(w, "rise", 1), getattr(w, "fall", 1))
            up = ann.prefix in self.installed
            machines[ann.prefix] = RiseFall(rise, fall, healthy=up)
            if w.type == "always":
                self.health[ann.prefix] = (True, "always")
                machines[ann.prefix].healthy = True
            else:
                self.health[ann.prefix] = (up, "announced before start, checking" if up else "checking")
        self.machines = machines
        for prefix in list(self.health):
            if prefix not in machines:
                del self.health[prefix]

    def report(self, results: list[Result]) -> None:
        """Feed check results into the state machines; wake the reconciler on change."""
        changed = False
        for prefix, ok, reason, hard in results:
            m = self.machines.get(prefix)
            if m is None:
                continue
            m.observe(ok, hard)
            new = (m.healthy, m.describe(reason, ok))
            if self.health.get(prefix) != new:
                self.health[prefix] = new
                changed = True
        if changed:
            self._wake.set()
        self.check_drain()

    def check_drain(self) -> None:
        """Re-read the drain file; wake the reconciler on change.

        Called by the tick, on SIGUSR1 and after every check report; each call
        pushes the tick back, so a node with busy watchers gets no extra wake-ups.
        """
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = asyncio.get_running_loop().call_later(DRAIN_POLL_S, self._tick)
        drained = os.path.exists(self.config.drain_file)
        if drained != self.drained:
            log.info("drain file %s %s", self.config.drain_file, "appeared: withdrawing all" if drained else "gone")
            self.drained = drained
            self._wake.set()

    # -- kernel
    def apply(self, stopping: bool = False) -> None:
        """Make the table match the decision, then record the state."""
        cfg = self.config
        decisions = decide(cfg, self.health, self.drained)
        wanted = set() if stopping else {p for p, d in decisions.items() if d.announce}
        lines = plan_routes(wanted, self.installed, cfg.table, cfg.proto)
        if lines:
            res = ip_cmd(["-force", "-batch", "-"], "\n".join(lines) + "\n")
            if res.returncode != 0:
                log.warning("ip -batch: %s", res.stderr.strip())
            try:
                self.installed = read_table(cfg.table, cfg.proto)
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("%s", exc)
            if self.installed != wanted:
                self._last_failure = time.monotonic()
        self.write_state(decisions, stopping)

    def write_state(self, decisions: dict[str, Decision], stopping: bool) -> None:
        """Update the state file when an announcement, a reason or the drain changed."""
        now = round(time.time(), 3)
        state: dict[str, dict[str, object]] = {}
        for ann in self.config.announcements:
            d = decisions[ann.prefix]
            announced = ann.prefix in self.installed
            reason = "stopped" if stopping else d.reason
            if d.announce and not announced and not stopping:
                reason = f"route install failed ({reason})"
            old = self.state.get(ann.prefix)
            since = old["since"] if old and old["announced"] == announced else now
            if not old or old["announced"] != announced:
                log.info("%s (%s): %s: %s", ann.prefix, ann.service, "announced" if announced else "withdrawn", reason)
            state[ann.prefix] = {"service": ann.service, "announced": announced, "reason": reason, "since": since}
        self.state = state
        doc = {"pid": os.getpid(), "drained": self.drained, "table": self.config.table, "prefixes": state}
        text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
        if text != self._last_state_text:
            try:
                write_atomic(self.config.state_file, text)
                self._last_state_text = text
            except OSError as exc:
                log.error("state file %s: %s", self.config.state_file, exc)

    # -- lifecycle
    def _start_watchers(self) -> None:
        for watcher in build_watchers(self.config):
            self._tasks.append(asyncio.create_task(watcher.run(self.report)))

    async def _stop_watchers(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def reload(self) -> None:
        """SIGHUP: take a new config if it is valid; watchers restart without a flap."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        await self._stop_watchers()
        old_table = (self.config.table, self.config.proto)
        if (new.table, new.proto) != old_table:
            self.apply(stopping=True)  # withdraw from the old table first
        self.config = new
        self.installed = read_table(new.table, new.proto)
        self._reset_machines()
        self.check_drain()
        self._start_watchers()
        log.info("config reloaded: %d announcement(s)", len(new.announcements))
        self._wake.set()

    async def once(self) -> int:
        """One check round, applied without rise/fall; routes stay as decided."""
        self.installed = read_table(self.config.table, self.config.proto)
        self._reset_machines()
        self.check_drain()
        results = await asyncio.gather(*(w.probe() for w in build_watchers(self.config)))
        for batch in results:
            for prefix, ok, reason, _hard in batch:
                self.health[prefix] = (ok, reason)
        self.apply()
        print(json.dumps(self.state, indent=1, sort_keys=True))
        return 0

    def _tick(self) -> None:
        """Every DRAIN_POLL_S: drain file, failed-change retry, periodic table re-read."""
        self.check_drain()  # also schedules the next tick
        now = time.monotonic()
        if now - self._last_sync >= RESYNC_S or (self._last_failure and now - self._last_failure >= RETRY_S):
            self._last_failure = 0.0
            self._last_sync = now
            try:
                self.installed = read_table(self.config.table, self.config.proto)
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("%s", exc)
            self._wake.set()

    def _signal(self, which: str) -> None:
        if which == "hup":
            self._hup = True
        else:
            self._stop.set()
        self._wake.set()

    async def run(self) -> int:
        """The daemon: reconcile, watch, react to signals, withdraw on exit."""
        loop = asyncio.get_running_loop()
        self.installed = read_table(self.config.table, self.config.proto)
        self._reset_machines()
        self.check_drain()
        self.apply()  # removes stale routes of ours that the config does not want
        loop.add_signal_handler(signal.SIGHUP, self._signal, "hup")
        loop.add_signal_handler(signal.SIGUSR1, self.check_drain)
        loop.add_signal_handler(signal.SIGTERM, self._signal, "stop")
        loop.add_signal_handler(signal.SIGINT, self._signal, "stop")
        self._start_watchers()
        self._last_sync = time.monotonic()
        self._tick_handle = loop.call_later(DRAIN_POLL_S, self._tick)
        log.info("running: table %d proto %d, %d announcement(s)", self.config.table, self.config.proto,
                 len(self.config.announcements))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._stop.is_set():
                    break
                if self._hup:
                    self._hup = False
                    await self.reload()
                self.apply()
        finally:
            if self._tick_handle:
                self._tick_handle.cancel()
                self._tick_handle = None
            await self._stop_watchers()
            self.apply(stopping=True)
            log.info("stopped: withdrew every route of table %d proto %d", self.config.table, self.config.proto)
        return 0


# -------------------------------------------------------------------- cli


def print_status(state_file: str) -> int:
    """``--status``: the state file as a table; 1 if it is missing or stale."""
    try:
        with open(state_file, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"no state: {state_file}: {exc}", file=sys.stderr)
        return 1
    pid = doc.get("pid")
    alive = isinstance(pid, int) and os.path.exists(f"/proc/{pid}")
    print(f"healthd pid {pid} {'running' if alive else 'NOT running'}; drained: {doc.get('drained')}")
    for prefix, p in sorted(doc.get("prefixes", {}).items()):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.get("since", 0)))
        mark = "ANNOUNCED" if p.get("announced") else "withdrawn"
        print(f"{prefix:<24} {p.get('service', ''):<16} {mark:<10} since {since}  {p.get('reason', '')}")
    return 0 if alive else 1


def missing_paths(config: Config) -> list[str]:
    """The HAProxy pidfiles and stats sockets the config names that do not exist (one line each).

    A wrong path (another init mode's layout) would read as "HAProxy is dead" and withdraw
    every VIP; so would starting before HAProxy. Either way healthd refuses to start.
    """
    out: list[str] = []
    seen: set[str] = set()
    for ann in config.announcements:
        w = ann.watch
        if not isinstance(w, HaproxyWatch):
            continue
        for what, path in (("HAProxy pidfile", w.pidfile), ("HAProxy stats socket", w.stats_socket)):
            if path not in seen and not os.path.exists(path):
                seen.add(path)
                out.append(f"{what} {path} (announcement {ann.prefix}) does not exist")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``anycastlb-healthd [--config F] [--once | --status]``."""
    ap = argparse.ArgumentParser(prog="anycastlb-healthd", description="Announce VIPs only while they are healthy.")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"healthd.json (default {DEFAULT_CONFIG})")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one check round, apply, print the state, exit")
    mode.add_argument("--status", action="store_true", help="print the state file and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every check transition")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s anycastlb-healthd: %(message)s")
    try:
        agent_config = load_config(args.config)
    except ConfigError as exc:
        print(f"anycastlb-healthd: {exc}", file=sys.stderr)
        return 2
    if args.status:
        return print_status(agent_config.state_file)
    missing = missing_paths(agent_config)
    if missing:
        for line in missing:
            print(f"anycastlb-healthd: refusing to start: {line}", file=sys.stderr)
        print("anycastlb-healthd: started without these it would withdraw every VIP they serve; start HAProxy "
              "first, or render healthd.json for this host's init mode (anycastlb/paths.py)", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_amain(args.config, args.once))
    except OSError as exc:
        if exc.errno == errno.EPERM:
            print("anycastlb-healthd: needs CAP_NET_ADMIN (root)", file=sys.stderr)
        else:
            print(f"anycastlb-healthd: {exc}", file=sys.stderr)
        return 1


async def _amain(config_path: str, once: bool) -> int:
    agent = Agent(config_path)
    return await (agent.once() if once else agent.run())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
