"""anycastlb-healthd: announce a VIP only while what serves it is healthy.

One process per node (stdlib only). For every configured prefix the agent
keeps one route in a dedicated kernel routing table while the prefix is
healthy, and deletes it when it is not::

    ip route replace 192.0.2.10/32 dev lo table 4242 proto 252
    ip route replace 2001:db8::10/128 dev lo table 4242 proto 252

BIRD learns that table over netlink (no polling: measured 5-15 ms from the
``ip route`` call to the route in the iBGP peer's kernel) and its BGP export
announces or withdraws the VIP.

The BIRD contract
-----------------
The BIRD config of every node that runs healthd must contain (names are
free, the table number and ``proto`` must match healthd.json ``table`` and
``proto``; verified with BIRD 2.0.12 in network namespaces, v4 and v6)::

    ipv4 table anycastlb4;
    ipv6 table anycastlb6;
    protocol kernel healthd4 {
        kernel table 4242;
        learn;
        ipv4 { table anycastlb4; import where krt_source = 252; export none; };
    }
    protocol kernel healthd6 {
        kernel table 4242;
        learn;
        ipv6 { table anycastlb6; import where krt_source = 252; export none; };
    }
    protocol pipe healthd4_pipe { table anycastlb4; peer table master4; import none; export all; }
    protocol pipe healthd6_pipe { table anycastlb6; peer table master6; import none; export all; }

and the BGP channels announce exactly those routes (the pipe keeps the
protocol name)::

    ipv4 { import none; export where proto = "healthd4"; };   # in each iBGP session
    ipv6 { import none; export where proto = "healthd6"; };

Facts behind it (BIRD 2.0.12):

- ``learn;`` is enough for ``proto 252`` (only ``proto kernel`` routes need
  more); ``learn all;`` is a *syntax error* in 2.0.12.
- A kernel protocol needs a BIRD table of its own: a second kernel protocol
  on ``master4`` fails with "Kernel syncer ... already attached to table
  master4". Hence the separate tables and the pipes.
- A node that also exports ``master4`` into the main kernel table must keep
  the VIP routes out of it: ``export filter { if proto ~ "healthd*" then
  reject; accept; };``.
- The learned route is ``dev lo`` without a gateway; BGP sends it with the
  session's own address as next hop (no ``next hop self`` needed).
- BIRD scans the table at start, so routes installed while BIRD was down are
  announced as soon as it comes up; BIRD never deletes them (``export none``).

This module holds the pure part (config, rise/fall, HAProxy ``show stat``
parsing, the announce decision); :mod:`anycastlb.healthd_main` holds the
daemon loop and its side effects.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

# The one parser of HAProxy's ``show stat`` CSV (re-exported here): it lives in the HAProxy
# monitoring plugin, a standard-library-only script (see anycastlb.answers).
from .plugins.check_anycastlb_haproxy import parse_show_stat

DEFAULT_CONFIG = "/etc/anycastlb/healthd.json"
DEFAULT_TABLE = 4242
DEFAULT_PROTO = 252
DEFAULT_STATE_FILE = "/run/anycastlb/healthd.state.json"
DEFAULT_DRAIN_FILE = "/var/lib/anycastlb/drain"

# Kernel tables that belong to the system (unspec, default, main, local).
_RESERVED_TABLES = {0, 253, 254, 255}
# Routing protocol numbers owned by the kernel, boot scripts and BIRD itself.
_RESERVED_PROTOS = {0, 1, 2, 3, 4, 12}


class ConfigError(ValueError):
    """healthd.json is not usable; the message names the file and the key."""


# --------------------------------------------------------------------- config


@dataclass(frozen=True)
class HaproxyWatch:
    """Healthy iff the HAProxy of ``pidfile`` lives and its stats socket says so.

    With ``events`` (a ring of HAProxy's config), the stats are read when HAProxy logs a state
    change there, at most every ``interval_ms``, and otherwise every ``reconcile_ms``; without it,
    or while HAProxy has no such ring, every ``interval_ms``.
    """

    pidfile: str
    stats_socket: str
    frontends: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()
    interval_ms: int = 100
    timeout_ms: int = 500
    events: str = ""
    reconcile_ms: int = 1000
    rise: int = 1
    fall: int = 1
    type: str = "haproxy"


@dataclass(frozen=True)
class TcpWatch:
    """Healthy iff a TCP connect to ``address:port`` succeeds (rise/fall).

    With ``pidfile``, also only while that process lives: its exit withdraws
    at once (pidfd), without waiting for the next check.
    """

    address: str
    port: int
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3
    pidfile: str = ""
    unit: str = ""  # a systemd service: its MainPID is watched like a pidfile's process
    type: str = "tcp"


@dataclass(frozen=True)
class HttpWatch:
    """Healthy iff ``GET path`` on ``address:port`` answers status ``expect`` (``pidfile`` as for tcp)."""

    address: str
    port: int
    path: str = "/"
    host: str = ""
    expect: int | str = 200  # a code, or codes and ranges as anycastlb.httpstatus reads them ("200-299")
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3
    pidfile: str = ""
    unit: str = ""
    type: str = "http"


@dataclass(frozen=True)
class DnsWatch:
    """Healthy iff the resolver at ``address:port`` answers ``name``/``qtype`` with NOERROR (udp)."""

    address: str
    name: str
    port: int = 53
    qtype: str = "A"
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3
    pidfile: str = ""
    unit: str = ""
    type: str = "dns"


@dataclass(frozen=True)
class KerberosWatch:
    """Healthy iff the KDC at ``address:port`` answers an AS-REQ for ``realm`` (udp or tcp)."""

    address: str
    realm: str
    port: int = 88
    protocol: str = "udp"
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3
    pidfile: str = ""
    unit: str = ""
    type: str = "kerberos"


@dataclass(frozen=True)
class AlwaysWatch:
    """Always healthy (the prefix is announced unless the node is drained)."""

    type: str = "always"


Watch = HaproxyWatch | TcpWatch | HttpWatch | DnsWatch | KerberosWatch | AlwaysWatch


@dataclass(frozen=True)
class Announcement:
    """One prefix this node announces while ``watch`` says healthy."""

    prefix: str  # normalised, e.g. "192.0.2.10/32"
    service: str
    watch: Watch


@dataclass(frozen=True)
class Config:
    """The whole healthd.json."""

    announcements: tuple[Announcement, ...]
    table: int = DEFAULT_TABLE
    proto: int = DEFAULT_PROTO
    state_file: str = DEFAULT_STATE_FILE
    drain_file: str = DEFAULT_DRAIN_FILE


_WATCH_TYPES: dict[str, type] = {"haproxy": HaproxyWatch, "tcp": TcpWatch, "http": HttpWatch, "dns": DnsWatch,
                                  "kerberos": KerberosWatch, "always": AlwaysWatch}
_REQUIRED = {"haproxy": ("pidfile", "stats_socket"), "tcp": ("address", "port"), "http": ("address", "port"),
             "dns": ("address", "name"), "kerberos": ("address", "realm")}
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
#: An HAProxy ring's name as healthd sends it on the CLI (``show events <ring> -w``).
_RING = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_REALM = re.compile(r"[A-Z0-9](?:[A-Z0-9.-]{0,126}[A-Z0-9])?")


def _int(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: must be an integer from {low} to {high}, not {value!r}")
    return value


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string, not {value!r}")
    return value


def _token(where: str, value: Any) -> str:
    """A string sent on the wire (request target, Host header): printable ASCII, no space."""
    text = _str(where, value)
    if any(not 0x20 < ord(c) < 0x7f for c in text):
        raise ConfigError(f"{where}: must be printable ASCII without spaces (percent-encode the rest), "
                          f"not {value!r}")
    return text


def _expect(where: str, value: Any) -> int | str:
    from . import httpstatus
    try:
        httpstatus.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value


def _names(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list of proxy names, not {value!r}")
    return tuple(_str(f"{where}[{i}]", v) for i, v in enumerate(value))


def _address(where: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(_str(where, value)))
    except ValueError:
        raise ConfigError(f"{where}: not an IP address: {value!r}") from None


def _unknown(where: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    extra = sorted(set(data) - set(allowed))
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(allowed))}")


def parse_watch(where: str, data: Any) -> Watch:
    """Validate one ``watch`` mapping and return its typed form."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with a 'type'")
    kind = data.get("type")
    if kind not in _WATCH_TYPES:
        raise ConfigError(f"{where}.type: must be one of {', '.join(sorted(_WATCH_TYPES))}, not {kind!r}")
    cls = _WATCH_TYPES[kind]
    _unknown(where, data, list(getattr(cls, "__dataclass_fields__")))
    for key in _REQUIRED.get(kind, ()):
        if key not in data:
            raise ConfigError(f"{where}.{key}: required for a {kind} watch")
    args: dict[str, Any] = {}
    for key, value in data.items():
        at = f"{where}.{key}"
        if key == "type":
            continue
        if key in ("path", "host"):
            args[key] = _token(at, value)
        elif key in ("pidfile", "stats_socket"):
            args[key] = _str(at, value)
        elif key == "unit":
            args[key] = _unit(at, value)
        elif key in ("frontends", "backends"):
            args[key] = _names(at, value)
        elif key == "address":
            args[key] = _address(at, value)
        elif key == "port":
            args[key] = _int(at, value, 1, 65535)
        elif key == "expect":
            args[key] = _expect(at, value)
        elif key == "events":
            if not isinstance(value, str) or not _RING.fullmatch(value):
                raise ConfigError(f"{at}: must be the name of an HAProxy ring (letters, digits, '.', '_', '-'), "
                                  f"not {value!r}")
            args[key] = value
        elif key in ("interval_ms", "timeout_ms", "reconcile_ms"):
            args[key] = _int(at, value, 10, 3_600_000)
        elif key in ("rise", "fall"):
            args[key] = _int(at, value, 1, 100)
        elif key == "name":
            if not isinstance(value, str) or not _DNS_NAME.fullmatch(value):
                raise ConfigError(f"{at}: not a DNS name: {value!r}")
            args[key] = value
        elif key == "qtype":
            from anycastlb.probes import DNS_TYPES
            if value not in DNS_TYPES:
                raise ConfigError(f"{at}: must be one of {', '.join(sorted(DNS_TYPES))}, not {value!r}")
            args[key] = value
        elif key == "realm":
            if not isinstance(value, str) or not _REALM.fullmatch(value):
                raise ConfigError(f"{at}: not a Kerberos realm: {value!r}")
            args[key] = value
        elif key == "protocol":
            if value not in ("udp", "tcp"):
                raise ConfigError(f"{at}: must be udp or tcp, not {value!r}")
            args[key] = value
    if kind == "http" and not args.get("path", "/").startswith("/"):
        raise ConfigError(f"{where}.path: must start with '/', not {args['path']!r}")
    return cls(**args)


def _unit(where: str, value: Any) -> str:
    """A systemd service unit name (the catalog's grammar, :data:`anycastlb.schema.UNIT_RE`)."""
    import re

    from .schema import UNIT_RE
    if not isinstance(value, str) or not re.fullmatch(UNIT_RE, value):
        raise ConfigError(f"{where}: must be a systemd service unit such as krb5-kdc.service, not {value!r}")
    return value


def parse_config(data: Any, source: str = "healthd.json") -> Config:
    """Validate a decoded healthd.json; raise :class:`ConfigError` naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a JSON object")
    _unknown(source, data, ["table", "proto", "state_file", "drain_file", "announcements"])
    table = _int(f"{source}: table", data.get("table", DEFAULT_TABLE), 1, 2**32 - 1)
    if table in _RESERVED_TABLES:
        raise ConfigError(f"{source}: table: {table} is a system table (default/main/local)")
    proto = _int(f"{source}: proto", data.get("proto", DEFAULT_PROTO), 1, 255)
    if proto in _RESERVED_PROTOS:
        raise ConfigError(f"{source}: proto: {proto} belongs to the kernel, boot or BIRD")
    anns = data.get("announcements")
    if not isinstance(anns, list):
        raise ConfigError(f"{source}: announcements: required, a list")
    parsed: list[Announcement] = []
    seen: dict[str, int] = {}
    for i, ann in enumerate(anns):
        where = f"{source}: announcements[{i}]"
        if not isinstance(ann, dict):
            raise ConfigError(f"{where}: must be a mapping")
        _unknown(where, ann, ["prefix", "service", "watch"])
        for key in ("prefix", "service", "watch"):
            if key not in ann:
                raise ConfigError(f"{where}.{key}: required")
        try:
            prefix = str(ipaddress.ip_network(_str(f"{where}.prefix", ann["prefix"])))
        except ValueError as exc:
            raise ConfigError(f"{where}.prefix: {exc}") from None
        if prefix in seen:
            raise ConfigError(f"{where}.prefix: {prefix} is already announced by announcements[{seen[prefix]}]")
        seen[prefix] = i
        parsed.append(Announcement(prefix, _str(f"{where}.service", ann["service"]),
                                   parse_watch(f"{where}.watch", ann["watch"])))
    return Config(
        announcements=tuple(parsed),
        table=table,
        proto=proto,
        state_file=_str(f"{source}: state_file", data.get("state_file", DEFAULT_STATE_FILE)),
        drain_file=_str(f"{source}: drain_file", data.get("drain_file", DEFAULT_DRAIN_FILE)),
    )


def load_config(path: str) -> Config:
    """Read and validate the JSON file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    return parse_config(data, path)


# ------------------------------------------------------------------ rise/fall


@dataclass
class RiseFall:
    """HAProxy-style hysteresis: ``rise`` successes to go up, ``fall`` failures to go down.

    A *hard* failure (connection refused, process gone) goes down at once.
    """

    rise: int
    fall: int
    healthy: bool = False
    _oks: int = 0
    _fails: int = 0

    def observe(self, ok: bool, hard: bool = False) -> bool:
        """Record one check result; return whether the state changed."""
        before = self.healthy
        if ok:
            self._fails = 0
            self._oks += 1
            if not self.healthy and self._oks >= self.rise:
                self.healthy = True
        else:
            self._oks = 0
            self._fails += 1
            if self.healthy and (hard or self._fails >= self.fall):
                self.healthy = False
        return self.healthy != before

    def describe(self, message: str, ok: bool) -> str:
        """A reason for the state file: stable while nothing changes."""
        if self.healthy and not ok:
            return f"failing {self._fails}/{self.fall}: {message}"
        if not self.healthy and ok:
            return f"rising {self._oks}/{self.rise}: {message}"
        return message


# ------------------------------------------------------------ haproxy stats

STAT_COMMAND = "show stat -1 3 -1\n"  # frontends and backends only, all proxies

#: A line of a ring in ``format timed``: ``<priority>ISO-8601-time message``.
_EVENT = re.compile(r"<([0-9]{1,3})>([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+[+-][0-9]{2}:[0-9]{2}) (.*)")


def parse_event(line: str) -> tuple[float, str] | None:
    """One line of ``show events <ring>`` (``format timed``): ``(Unix time, message)``, or None
    when the line is not an event (an answer such as ``No such event sink``)."""
    m = _EVENT.fullmatch(line.rstrip("\r\n"))
    if m is None:
        return None
    try:
        return datetime.fromisoformat(m[2]).timestamp(), m[3]
    except ValueError:
        return None


def haproxy_verdict(rows: Mapping[tuple[str, str], Mapping[str, str]],
                    frontends: Sequence[str], backends: Sequence[str]) -> tuple[bool, str]:
    """Every frontend OPEN and every backend UP with a server up → ``(True, "...")``."""
    for name in frontends:
        row = rows.get((name, "FRONTEND"))
        if row is None:
            return False, f"frontend {name} not in haproxy"
        if row.get("status") != "OPEN":
            return False, f"frontend {name} is {row.get('status') or 'without status'}"
    for name in backends:
        row = rows.get((name, "BACKEND"))
        if row is None:
            return False, f"backend {name} not in haproxy"
        status = row.get("status") or ""
        up = sum(int(row.get(k) or 0) for k in ("act", "bck"))
        if not status.startswith("UP") or up < 1:
            return False, f"backend {name} is {status or 'without status'} ({up} servers up)"
    return True, "haproxy serves"


# ------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Decision:
    """Whether a prefix should be announced now, and why."""

    announce: bool
    reason: str


def decide(config: Config, health: Mapping[str, tuple[bool, str]], drained: bool) -> dict[str, Decision]:
    """Which prefixes to announce: healthy ones, none while drained.

    ``health`` maps a prefix to ``(healthy, reason)``; an unknown prefix is
    not announced (its check has not concluded yet).
    """
    out: dict[str, Decision] = {}
    for ann in config.announcements:
        ok, reason = health.get(ann.prefix, (False, "no check result yet"))
        if drained:
            out[ann.prefix] = Decision(False, f"drained ({config.drain_file} exists)")
        else:
            out[ann.prefix] = Decision(ok, reason)
    return out


def plan_routes(wanted: set[str], installed: set[str], table: int, proto: int) -> list[str]:
    """``ip -batch`` lines that turn ``installed`` into ``wanted`` (deletes first)."""
    lines = [f"route del {p} table {table} proto {proto}" for p in sorted(installed - wanted)]
    lines += [f"route replace {p} dev lo table {table} proto {proto}" for p in sorted(wanted - installed)]
    return lines


def parse_ip_routes(text: str, v6: bool = False) -> set[str]:
    """Prefixes in ``ip -j -4|-6 route show`` output, normalised (``192.0.2.10`` → ``192.0.2.10/32``)."""
    out: set[str] = set()
    for route in json.loads(text or "[]"):
        dst = route.get("dst", "")
        if dst == "default":
            dst = "::/0" if v6 else "0.0.0.0/0"
        if dst:
            out.add(str(ipaddress.ip_network(dst)))
    return out
