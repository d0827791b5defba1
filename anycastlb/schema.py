"""Typed catalog sections (pydantic 2): unknown keys refused, values normalised.

Each model validates one object (a node, a peer, a service after its template
chain is resolved ...). Shorthands are normalised here: a single VIP becomes a
list, ``88/udp`` becomes ``Port(88, "udp")``, a list of backends becomes a
mapping, ``2s`` becomes 2000 (milliseconds). The JSON Schema of the catalog
(``anycastlb schema``) is exported from these same models.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema,
                      field_validator, model_validator)

from . import httpstatus

# ------------------------------------------------------------------ string grammars
# Every string that reaches a config has a grammar, matched whole (re.fullmatch, \A..\Z:
# ``$`` would also match before a final newline). docs/catalog.md has the table.

#: A name: nodes, peers, clusters, templates, services, backends, certificates, passwords, users.
NAME_RE = r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A host name per RFC 1123: dot-separated labels of letters, digits and inner hyphens.
HOSTNAME_RE = rf"\A{_LABEL}(?:\.{_LABEL})*\Z"
#: A host name, or ``*.`` and a host name (apache aliases).
WILDCARD_HOSTNAME_RE = rf"\A(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\Z"
#: An absolute URI path (RFC 3986 path-absolute, a subset): no query, fragment, space,
#: quote, backslash, percent-encoding, empty or dot segment.
URI_PATH_RE = r"\A(?:/[A-Za-z0-9._~!*+,;=:@-]*)+\Z"
#: An HTTP status: a code, ``2xx``, a range ``200-299``, or a comma-separated list of them.
_STATUS = r"(?:[1-5][0-9][0-9]|[1-5]xx|[1-5][0-9][0-9]-[1-5][0-9][0-9])"
STATUS_RE = rf"\A{_STATUS}(?:,{_STATUS})*\Z"
#: A systemd service unit (``check.unit``): letters, digits and ``:_.-``, an optional template
#: instance after ``@``, then ``.service`` (no escapes, no path, nothing to quote).
UNIT_RE = r"\A[A-Za-z0-9][A-Za-z0-9:_.-]{0,200}(?:@[A-Za-z0-9:_.-]{1,40})?\.service\Z"
#: Free text (descriptions): printable characters, no line break or control character.
TEXT_MAX = 200


def _grammar(regex: str, what: str, example: str, max_len: int) -> Any:
    """A string type matched whole by ``regex``; the error names the expected form."""
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if len(value) > max_len:
            raise ValueError(f"{what} is longer than {max_len} characters")
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {what} (expected a form such as {example})")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "pattern": js_pattern(regex),
                                                                 "maxLength": max_len})]


def js_pattern(regex: str) -> str:
    """The ECMA-262 spelling of a fullmatch pattern, for the JSON Schema export."""
    return regex.replace("\\A", "^").replace("\\Z", "$")


Name = _grammar(NAME_RE, "a name (a letter or digit, then letters, digits, '.', '_', '-')", "web-1", 63)
Hostname = _grammar(HOSTNAME_RE, "a host name (RFC 1123)", "www.example.org", 253)
WildcardHostname = _grammar(WILDCARD_HOSTNAME_RE, "a host name or *.host name", "*.example.org", 253)
ServiceUnit = _grammar(UNIT_RE, "a systemd service unit (name.service or name@instance.service)",
                       "krb5-kdc.service", 255)


def _uri_path(value: str) -> str:
    if len(value) > 1024:
        raise ValueError("a path is at most 1024 characters")
    if not re.fullmatch(URI_PATH_RE, value):
        raise ValueError(f"{value!r} is not an absolute URI path: '/' then letters, digits and "
                         f"-._~!*+,;=:@ (no query '?', fragment '#', space, quote, '%' or '\\'), e.g. /healthz")
    segments = value.split("/")[1:]
    if any(seg in (".", "..") for seg in segments) or any(seg == "" for seg in segments[:-1]):
        raise ValueError(f"{value!r} has an empty, '.' or '..' segment: write the plain path, e.g. /healthz")
    return value


UriPath = Annotated[str, AfterValidator(_uri_path), WithJsonSchema({"type": "string", "pattern": js_pattern(URI_PATH_RE)})]


def _text(value: str) -> str:
    if len(value) > TEXT_MAX or not value.isprintable():
        raise ValueError(f"free text is one line of at most {TEXT_MAX} printable characters")
    return value


Text = Annotated[str, AfterValidator(_text), WithJsonSchema({"type": "string", "maxLength": TEXT_MAX})]


def parse_status(value: Any) -> str:
    """``200`` / ``"2xx"`` / ``"200-299"`` / ``"200,301-302"`` → the canonical text (:mod:`anycastlb.httpstatus`)."""
    if isinstance(value, str) and len(value) > 80:
        raise ValueError("an HTTP status list is at most 80 characters")
    try:
        return httpstatus.text(httpstatus.parse(value))
    except ValueError:
        raise ValueError(f"{str(value)[:20]!r} is not an HTTP status: a code 100-599 such as 200, a class such "
                         f"as 2xx, a range such as 200-299, or a list of them such as 200,301-302") from None


HttpStatus = Annotated[str, BeforeValidator(parse_status),
                       WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 100, "maximum": 599},
                                                 {"type": "string", "pattern": js_pattern(STATUS_RE)}]})]


def parse_ip(text: Any, version: int | None = None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A plain IP address (no scope id, not IPv4-mapped); ``version`` 4 or 6 restricts the family."""
    want = f"an IPv{version} address" if version else "an IP address"
    if not isinstance(text, str) or len(text) > 45 or "%" in text:
        raise ValueError(f"{str(text)[:50]!r} is not {want}")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {want}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        raise ValueError(f"{text!r} is an IPv4-mapped IPv6 address: write {ip.ipv4_mapped}")
    if version and ip.version != version:
        raise ValueError(f"{text!r} is not {want}")
    return ip


def parse_net(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network prefix with its host bits zero (no scope id)."""
    if not isinstance(text, str) or len(text) > 49 or "%" in text:
        raise ValueError(f"{str(text)[:50]!r} is not a network prefix such as 192.0.2.0/24")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValueError(f"{text!r} is not a network prefix such as 192.0.2.0/24 "
                         f"(host bits must be zero)") from None


def _address(version: int | None) -> Any:
    def check(value: Any) -> str:
        return str(parse_ip(value, version))
    return check


IPv4Str = Annotated[str, BeforeValidator(_address(4)), WithJsonSchema({"type": "string", "format": "ipv4"})]
IPv6Str = Annotated[str, BeforeValidator(_address(6)), WithJsonSchema({"type": "string", "format": "ipv6"})]
IPStr = Annotated[str, BeforeValidator(_address(None)), WithJsonSchema({"type": "string"})]

_DURATION = re.compile(r"\A(\d{1,9}(?:\.\d{1,6})?)(ms|s|m)\Z")
#: Lower bounds (milliseconds) for the timers a daemon runs.
MIN_BFD_INTERVAL_MS = 10
MIN_CHECK_INTERVAL_MS = 100


def parse_duration(value: Any) -> int:
    """``100ms``, ``2s``, ``1.5s``, ``1m`` → milliseconds. A bare number is refused: write its unit."""
    if isinstance(value, bool) or value is None:
        raise ValueError("a duration with a unit is expected, such as 2s or 100ms")
    if isinstance(value, (int, float)):
        shown = str(value)[:12]
        raise ValueError(f"{shown} has no unit: write {shown}ms or {shown}s")
    m = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) and len(value) < 40 else None
    if not m:
        raise ValueError(f"{str(value)[:40]!r} is not a duration such as 2s, 1.5s, 100ms or 1m")
    ms = float(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000}[m.group(2)]
    if ms < 1 or ms > 3_600_000:
        raise ValueError(f"{value!r} is out of range (1ms .. 1h)")
    return int(round(ms))


def _at_least(low_ms: int) -> Any:
    def check(ms: int) -> int:
        if ms < low_ms:
            raise ValueError(f"{ms}ms is below the lower bound {low_ms}ms")
        return ms
    return check


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


Duration = Annotated[int, BeforeValidator(parse_duration),
                     WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m)$"})]
BfdInterval = Annotated[Duration, AfterValidator(_at_least(MIN_BFD_INTERVAL_MS))]
CheckInterval = Annotated[Duration, AfterValidator(_at_least(MIN_CHECK_INTERVAL_MS))]
HoldTime = Annotated[Duration, AfterValidator(_at_least(3000))]
StrList = Annotated[list[str], BeforeValidator(_as_list),
                    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


class Port(BaseModel):
    """A port and its transport protocol."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


def _parse_port(value: Any) -> Any:
    if isinstance(value, Port) or isinstance(value, dict):
        return value
    if isinstance(value, bool):
        raise ValueError("a port such as 443, 88/udp or 88/tcp is expected")
    if isinstance(value, int):
        number, proto = value, "tcp"
    else:
        m = re.fullmatch(r"\s*(\d{1,5})\s*(?:/\s*(\w+))?\s*", str(value))
        if not m:
            raise ValueError(f"{value!r} is not a port such as 443, 88/udp or 88/tcp")
        number, proto = int(m.group(1)), (m.group(2) or "tcp").lower()
        if proto not in ("tcp", "udp"):
            raise ValueError(f"{value!r}: the protocol must be tcp or udp")
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} is out of range (1-65535)")
    return Port(port=number, protocol="udp" if proto == "udp" else "tcp")


PortList = Annotated[list[Annotated[Port, BeforeValidator(_parse_port)]], BeforeValidator(_as_list),
                     WithJsonSchema({"anyOf": [
                         {"type": "integer", "minimum": 1, "maximum": 65535},
                         {"type": "string", "pattern": r"^\d+(/(tcp|udp))?$"},
                         {"type": "array", "items": {"anyOf": [
                             {"type": "integer", "minimum": 1, "maximum": 65535},
                             {"type": "string", "pattern": r"^\d+(/(tcp|udp))?$"}]}}]})]


class Strict(BaseModel):
    """Base: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


State = Literal["active", "drain", "maintenance"]


class Bfd(Strict):
    """BFD timers for every BGP session of the fleet."""

    interval: BfdInterval = 100
    multiplier: int = Field(3, ge=1, le=255)


Session = Literal["direct", "multihop"]


class Bgp(Strict):
    """The iBGP domain."""

    asn: int = Field(ge=1, le=4294967295)
    bfd: Bfd = Bfd()
    password: Name | None = Field(None, description="name of a BGP password in the secrets pillar")
    hold: HoldTime = Field(6000, description="BGP hold time (at least 3s)")
    session: Session = Field("direct", description="the fleet's own sessions (speakers, listeners and route "
                                                   "reflectors): direct (one segment) or multihop (routed)")


#: A rule name: printable, no quotes, no line breaks (it becomes an nft comment).
RULE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9 _.:/()+,-]{0,63}$"


def _distinct_ports(v: list[int]) -> list[int]:
    """A list of ports in which none appears twice."""
    if len(set(v)) != len(v):
        raise ValueError("a port is listed twice")
    return v


def _prefix_or_any(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("sources may not be empty: write [any] to accept everyone")
    for i, item in enumerate(v):
        if item == "any":
            continue
        try:
            parse_net(item)
        except ValueError:
            raise ValueError(f"sources[{i}]: {str(item)[:50]!r} is neither 'any' nor a network prefix") from None
    return v


class AcceptRule(Strict):
    """One accept rule of the site, added to a node's nftables input chain (no raw nft text)."""

    name: Annotated[str, Field(pattern=RULE_NAME_RE, description="why the rule exists (its nft comment)")]
    protocol: Literal["tcp", "udp", "icmp"]
    ports: list[PortNumber] = Field([], description="destination ports (tcp, udp); none for icmp")
    sources: Annotated[StrList, Field(description="prefixes, or [any]")]

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        return _prefix_or_any(v)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        return _distinct_ports(v)

    @model_validator(mode="after")
    def _ports_fit_protocol(self) -> "AcceptRule":
        if self.protocol == "icmp" and self.ports:
            raise ValueError("icmp has no ports: leave ports out")
        if self.protocol != "icmp" and not self.ports:
            raise ValueError(f"a {self.protocol} rule needs ports (a list of port numbers)")
        return self


class Firewall(Strict):
    """Extra accept rules for every managed node's firewall."""

    accept: list[AcceptRule] = []


class NodeFirewall(Firewall):
    """A node's own accept rules; ``unmanaged`` leaves its firewall to the site (nothing rendered or loaded)."""

    unmanaged: bool = False


def _node_firewall(value: Any) -> Any:
    if value == "unmanaged":
        return {"unmanaged": True}
    if isinstance(value, str):
        raise ValueError(f"{value!r}: write unmanaged, or a mapping with accept rules")
    return value


NodeFirewallField = Annotated[NodeFirewall | None, BeforeValidator(_node_firewall)]

NodeRole = Literal["salt-master", "route-reflector", "monitoring", "acme"]


def _prefixes(v: list[str]) -> list[str]:
    out = []
    for i, item in enumerate(v):
        try:
            out.append(str(parse_net(item)))
        except ValueError:
            raise ValueError(f"[{i}]: {str(item)[:50]!r} is not a network prefix such as 10.0.0.0/8") from None
    return out


class SaltApi(Strict):
    """salt-api on the salt-master node: its port is opened to ``sources``."""

    port: PortNumber = Field(8000, description="the port rest_cherrypy (or rest_tornado) listens on")
    sources: StrList = Field([], description="prefixes that may call it (default: management)")

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        return _prefixes(v)


class SaltMaster(Strict):
    """The Salt master's own needs on its node's firewall (role salt-master only)."""

    minion_networks: StrList = Field([], description="prefixes of the master's other minions (4505/4506 are "
                                                     "open to management and the catalog's nodes anyway)")
    api: SaltApi | None = Field(None, description="salt-api, when it runs (its port is opened)")

    @field_validator("minion_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return _prefixes(v)


class Node(Strict):
    """A managed host, keyed by its Salt minion id."""

    address: IPv4Str
    address6: IPv6Str | None = None
    roles: list[NodeRole] = []
    state: State = "active"
    firewall: NodeFirewallField = Field(
        None, description="extra accept rules of this node, or 'unmanaged': no ruleset is rendered or loaded")
    salt: SaltMaster | None = Field(None, description="role salt-master: minion networks and salt-api")

    @model_validator(mode="after")
    def _salt_only_on_the_master(self) -> "Node":
        if self.salt is not None and "salt-master" not in self.roles:
            raise ValueError("salt: only a node with role salt-master takes it")
        return self


class PeerBfd(Strict):
    """BFD of one peer's sessions: off, the fleet's timers, or its own."""

    enabled: bool = True
    interval: BfdInterval | None = None
    multiplier: int | None = Field(None, ge=1, le=255)


def _peer_bfd(value: Any) -> Any:
    if isinstance(value, bool):
        return {"enabled": value}
    if value is None or isinstance(value, (dict, PeerBfd)):
        return {} if value is None else value
    raise ValueError(f"{value!r}: write true, false (off), or {{interval, multiplier}}")


PeerBfdField = Annotated[PeerBfd, BeforeValidator(_peer_bfd),
                         WithJsonSchema({"anyOf": [{"type": "boolean"}, PeerBfd.model_json_schema()]})]


class Peer(Strict):
    """A router outside the fleet that the route reflectors feed."""

    address: IPv4Str
    address6: IPv6Str | None = None
    asn: int = Field(ge=1, le=4294967295)
    password: Name | None = None
    session: Session = Field("direct", description="direct (a shared segment) or multihop (routed)")
    bfd: PeerBfdField = Field(default_factory=lambda: PeerBfd(),
                              description="true: bgp.bfd timers; false: no BFD; or its own {interval, multiplier}")
    communities: StrList = Field([], description="added to every route sent: 64500:100 or large 64512:1:2")
    med: int | None = Field(None, ge=0, le=4294967295, description="MED of every route sent")
    prepend: int = Field(0, ge=0, le=8, description="extra copies of bgp.asn on the AS path sent")
    local_pref: int | None = Field(None, ge=0, le=4294967295,
                                   description="LOCAL_PREF of every route sent (iBGP peers only)")

    @field_validator("communities")
    @classmethod
    def _communities(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            m = re.fullmatch(r"(\d{1,10}):(\d{1,10})(?::(\d{1,10}))?", str(text))
            parts = [int(x) for x in m.groups() if x is not None] if m else []
            limit = 4294967295 if len(parts) == 3 else 65535
            if not parts or any(x > limit for x in parts):
                raise ValueError(f"communities[{i}]: {text!r} is neither a community (0-65535:0-65535) "
                                 "nor a large community (three 32-bit numbers)")
        if len(set(v)) != len(v):
            raise ValueError("a community is listed twice")
        return v


#: An e-mail address: letters, digits, ``._+-`` before the ``@``, a DNS name after it.
#: The local part is narrower than RFC 5322's dot-atom on purpose: Debian's mail scripts pass the
#: address unquoted to ``mail``, so no leading ``-`` (an option) and no ``*?[{}|$`'&#~!/=^%`` (shell).
EMAIL_RE = (r"^[A-Za-z0-9][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+)*"
            r"@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


def _display_name(value: str) -> str:
    """An Icinga user's display name: one printable line (no line or paragraph separator, no bidi
    control), at most 64 characters, without quotes or backslashes."""
    if not value or len(value) > 64 or not value.isprintable() or '"' in value or "\\" in value:
        raise ValueError("a display name is one line of at most 64 printable characters, "
                         "without quotes or backslashes, e.g. Network Operations")
    return value


class Contact(Strict):
    """Someone a ``monitor.notify`` name stands for: Icinga mails them."""

    email: Annotated[str, Field(pattern=EMAIL_RE, max_length=254, description="mailed by Icinga's mail commands")]
    display_name: Annotated[str, AfterValidator(_display_name)] | None = None


class Monitoring(Strict):
    """How the monitoring nodes' Icinga 2 is run."""

    icinga: Literal["standalone", "conf.d"] = Field(
        "standalone", description="standalone: anycastlb owns icinga2.conf; conf.d: only conf.d/anycastlb/ "
                                  "is added to an existing Icinga 2")



# ------------------------------------------------ per-service settings and protocol checks (issue 19)

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNIT_DURATION = re.compile(r"\A(\d{1,9})(ms|s|m|h|d)\Z")


def _unit_duration(low_ms: int, high_ms: int, example: str) -> Any:
    """A validator for a duration that must carry its unit (``500ms``, ``30s``, ``10m``, ``8h``, ``365d``)."""
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, str):
            raise ValueError(f"{value!r} has no unit: write a duration such as {example} (ms, s, m, h or d)")
        m = _UNIT_DURATION.fullmatch(value.strip())
        if not m:
            raise ValueError(f"{value!r} is not a duration such as {example} (a whole number and ms, s, m, h or d)")
        ms = int(m.group(1)) * _UNIT_MS[m.group(2)]
        if not low_ms <= ms <= high_ms:
            raise ValueError(f"{value!r} is out of range")
        return ms
    return parse


_DURATION_SCHEMA = {"type": "string", "pattern": r"^\d+(ms|s|m|h|d)$"}
#: An HAProxy timeout, in milliseconds: 1ms .. 7d (HAProxy's limit is about 24 days).
Timeout = Annotated[int, BeforeValidator(_unit_duration(1, 7 * 86_400_000, "30s or 10m")),
                    WithJsonSchema(_DURATION_SCHEMA)]
#: An HSTS max-age, in milliseconds: 0 (forget) .. 2 years.
MaxAge = Annotated[int, BeforeValidator(_unit_duration(0, 730 * 86_400_000, "365d")),
                   WithJsonSchema(_DURATION_SCHEMA)]


class Cluster(Strict):
    """A named set of HAProxy nodes."""

    nodes: list[Name]
    steering: bool | None = Field(
        None, description="hand the packets of tcp flows a node does not own to the cluster's other nodes "
                          "(docs/steering.md); default: on when the cluster has more than one node")
    drain_deadline: Annotated[int, BeforeValidator(_unit_duration(0, 3_600_000, "60s")),
                              WithJsonSchema(_DURATION_SCHEMA)] = Field(
        60_000, description="how long salt-run anycastlb.drain waits, once the node is withdrawn, for its HAProxy sessions to end (0s: not at all)")
    frontends: Literal["service", "pooled"] = Field(
        "service", description="HAProxy frontends: one per service and port (service), or one per port for the "
                               "services of one tenant whose frontends would be alike, each connection "
                               "handed to its service's backend by destination address (pooled: a reload at "
                               "hundreds of services parses far fewer TLS contexts; docs/performance.md)")


#: An ACME External Account Binding key id (base64url characters, as CAs hand them out).
EabKeyId = _grammar(r"\A[A-Za-z0-9_-]{1,128}\Z", "an EAB key id (letters, digits, '_' and '-')", "kid-1", 128)
#: An ACME directory URL: https (http only for a lab CA on a documentation address is not special-cased).
AcmeDirectory = _grammar(r"\Ahttps://[A-Za-z0-9.-]{1,253}(?::\d{1,5})?(?:/[A-Za-z0-9._~!*+,;=:@/-]{0,1023})?\Z",
                         "an https URL", "https://acme-v02.api.letsencrypt.org/directory", 1300)


class AcmeEab(Strict):
    """External Account Binding: the key id, and the name of its HMAC key in the secrets store (acme_eab)."""

    key_id: EabKeyId
    secret: Name = Field(description="name of the HMAC key under acme_eab in the secrets store")


class Acme(Strict):
    """The fleet's ACME account: where certificates for ``tls: {acme: true}`` come from."""

    directory: AcmeDirectory
    contact: Annotated[str, Field(pattern=EMAIL_RE, max_length=254, description="the account's contact e-mail")]
    renew_before: Annotated[int, BeforeValidator(_unit_duration(3_600_000, 365 * 86_400_000, "30d")),
                            WithJsonSchema(_DURATION_SCHEMA)] = Field(
        30 * 86_400_000, description="renew when less lifetime than this remains (a duration with a unit: 30d, 12h)")
    eab: AcmeEab | None = None


#: A Kerberos realm as written in practice: upper-case letters, digits, '.', '-'.
Realm = _grammar(r"\A[A-Z0-9](?:[A-Z0-9.-]{0,126}[A-Z0-9])?\Z", "a Kerberos realm (upper case)", "EXAMPLE.ORG", 128)
#: A database or cookie name: letters, digits, '_' and '-', at most 64 characters.
Token = _grammar(r"\A[A-Za-z0-9_][A-Za-z0-9_-]{0,63}\Z", "a name of letters, digits, '_' and '-'", "haproxy", 64)
#: An absolute http(s) URL made of the same safe characters (a host name, an optional port and path).
#: An absolute http(s) URL: a host name, an optional port and a path of the URI path's characters.
Url = _grammar(r"\Ahttps?://[A-Za-z0-9.-]{1,253}(?::\d{1,5})?(?:/[A-Za-z0-9._~!*+,;=:@/-]{0,1023})?\Z",
               "an http(s) URL", "https://www.example.org/new/", 1300)
#: Text an HTTP check expects in a body: printable ASCII without quotes or backslashes.
CheckBody = _grammar(r"\A[A-Za-z0-9 !#$%&()*+,./:;<=>?@\[\]^_`{|}~-]{1,128}\Z", "printable text without quotes",
                     "status: ok", 128)


def _backend_port(value: Any) -> Any:
    """``8080`` (every port) or ``{389: 1389, 636: 1636}`` (per frontend port; unmapped ports stay as they are)."""
    def one(v: Any, what: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{what}{v!r} is not a port number such as 8080")
        if not 1 <= v <= 65535:
            raise ValueError(f"{what}{v} is out of range (1-65535)")
        return v
    if isinstance(value, dict):
        if not value:
            raise ValueError("an empty mapping: write {frontend port: backend port}, e.g. {389: 1389}")
        return {one(k, "frontend port "): one(v, "backend port ") for k, v in value.items()}
    if value is None:
        return None
    return one(value, "")


BackendPort = Annotated[int | dict[int, int], BeforeValidator(_backend_port),
                        WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                                                  {"type": "object", "additionalProperties": {
                                                      "type": "integer", "minimum": 1, "maximum": 65535}}]})]


class ProtocolCheck(Strict):
    """A check HAProxy runs on the servers of a tcp service."""

    port: PortNumber | None = Field(None, description="port the check connects to (default: each server's port)")


class LdapCheck(ProtocolCheck):
    """HAProxy's LDAPv3 anonymous bind check (``option ldap-check``), in clear text: for LDAPS, check the plain port."""


class SmtpCheck(ProtocolCheck):
    """HAProxy's SMTP check (``option smtpchk EHLO <domain>``)."""

    domain: Hostname = "localhost"


class SqlCheck(ProtocolCheck):
    """HAProxy's MySQL or PostgreSQL check: it logs in as ``user`` (no password)."""

    user: Token


class SslHelloCheck(ProtocolCheck):
    """HAProxy's SSLv3/TLS client hello check (``option ssl-hello-chk``)."""


DnsType = Literal["A", "AAAA", "NS", "SOA", "MX", "TXT", "SRV", "PTR", "CNAME"]


class DnsCheck(Strict):
    """healthd asks the backend for ``name``/``type`` (udp); healthy iff it answers NOERROR."""

    name: Hostname
    type: DnsType = "A"
    port: PortNumber = 53


class KerberosCheck(Strict):
    """healthd sends an AS-REQ for ``krbtgt/REALM`` (client ``krbtgt/REALM``); healthy iff a KDC of ``realm`` answers."""

    realm: Realm
    port: PortNumber = 88
    protocol: Literal["udp", "tcp"] = "udp"


class Timeouts(Strict):
    """HAProxy timeouts of one service; unset ones keep the global defaults of haproxy.cfg."""

    client: Timeout | None = Field(None, description="client inactivity (frontend)")
    server: Timeout | None = Field(None, description="server inactivity (backend)")
    connect: Timeout | None = Field(None, description="connecting to a server")
    tunnel: Timeout | None = Field(None, description="both sides inactive once the connection is a tunnel")


def _stick(value: Any) -> Any:
    return {"by": value} if isinstance(value, str) else value


class Stick(Strict):
    """Keep a client on one server: an inserted cookie (http) or the source address (stick-table)."""

    by: Literal["cookie", "source"]
    cookie: Token | None = Field(None, description="cookie name (by cookie; default SRV_<service>)")
    expire: Timeout | None = Field(None, description="how long a source stays bound to its server (by source; 30m)")


class Hsts(Strict):
    """Strict-Transport-Security on the answers of the service's TLS ports."""

    max_age: MaxAge = 365 * 86_400_000
    include_subdomains: bool = False
    preload: bool = False


class Redirect(Strict):
    """Requests whose path starts with ``path`` are sent elsewhere (``location``: one URL; ``prefix``: the path kept)."""

    path: UriPath
    location: Url | None = None
    prefix: Url | None = None
    code: Literal[301, 302, 303, 307, 308] = 301


#: HAProxy section keywords: a raw directive starting with one would open a new section.
HAPROXY_SECTIONS = frozenset({"global", "defaults", "frontend", "backend", "listen", "peers", "resolvers",
                              "userlist", "mailers", "program", "http-errors", "ring", "cache", "fcgi-app"})


def _raw_directive(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a directive (a string such as 'http-request deny if {{ path_beg /x }}')")
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a raw directive is one line: newlines are refused")
    if not value.strip() or len(value) > 1024 or not value.isprintable():
        raise ValueError("a raw directive is one non-empty line of printable text, at most 1024 characters")
    if value.split()[0].lower() in HAPROXY_SECTIONS:
        raise ValueError(f"a raw directive may not open a section ({value.split()[0]!r})")
    return value.strip()


RawDirective = Annotated[str, BeforeValidator(_raw_directive), WithJsonSchema({"type": "string", "pattern": r"^[^\r\n]+$"})]


class Raw(Strict):
    """Raw HAProxy directives, appended to the service's sections (root files only; marked in diff)."""

    frontend: list[RawDirective] = []
    backend: list[RawDirective] = []


class HaproxySettings(Strict):
    """Per-service HAProxy settings (modes http and tcp)."""

    timeouts: Timeouts = Timeouts()
    maxconn: int | None = Field(None, ge=1, le=1_000_000, description="concurrent connections of each frontend")
    server_maxconn: int | None = Field(None, ge=1, le=100_000,
                                       description="concurrent connections per server (more wait in the queue)")
    send_proxy: Literal["v1", "v2"] | None = Field(None, description="PROXY protocol to the servers and checks")
    stick: Annotated[Stick | None, BeforeValidator(_stick)] = None
    hsts: Hsts | None = None
    redirects: list[Redirect] = []
    raw: Raw | None = None


class HttpCheck(Strict):
    path: UriPath = "/"
    expect: HttpStatus = "200"
    host: Hostname | None = None
    port: PortNumber | None = None
    body: CheckBody | None = Field(None, description="text the answer's body must contain (HAProxy backends)")


class TcpCheck(Strict):
    port: PortNumber | None = None


class Check(Strict):
    """A health check: exactly one kind (http, tcp or a protocol check), with its timers."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    ldap: LdapCheck | None = None
    smtp: SmtpCheck | None = None
    mysql: SqlCheck | None = None
    pgsql: SqlCheck | None = None
    ssl_hello: SslHelloCheck | None = None
    dns: DnsCheck | None = None
    kerberos: KerberosCheck | None = None
    interval: CheckInterval = 2000
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(3, ge=1, le=100)
    timeout: Annotated[Duration, AfterValidator(_at_least(10))] | None = None
    unit: ServiceUnit | None = Field(None, description="anycast services: the service's systemd unit; "
                                     "healthd withdraws the moment its main process dies")


class Tls(Strict):
    """The certificate HAProxy terminates TLS with (a name in the secrets store, or ``acme: true``), and where."""

    certificate: Name | None = Field(None, description="name of a certificate in the secrets pillar")
    acme: bool = Field(False, description="issued and renewed by the fleet's ACME issuer for apache.server_name "
                                          "and apache.aliases (the catalog's acme section)")
    ports: list[PortNumber] = Field([443], min_length=1, description="the tcp ports of the service that terminate "
                                                                     "TLS (default [443])")

    @field_validator("ports")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        return _distinct_ports(v)

    @model_validator(mode="after")
    def _one_source(self) -> "Tls":
        if self.acme and self.certificate is not None:
            raise ValueError("tls has both certificate and acme: true; keep one")
        if not self.acme and self.certificate is None:
            raise ValueError("tls needs certificate (a name in the secrets pillar) or acme: true")
        return self


class Route(Strict):
    """What this service answers on a VIP:port it shares with other services (mode http).

    A request goes to the service whose host matches best (an exact name before a ``*.`` name,
    before any host), then whose path prefix is longest. With TLS, the certificate follows SNI.
    """

    hosts: list[WildcardHostname] | None = Field(
        None, description="Host names (the Host header; the certificate is chosen by SNI); default: "
                          "apache.server_name and apache.aliases; [] answers any host")
    paths: list[UriPath] = Field(["/"], min_length=1, description="path prefixes, whole segments: /api is /api "
                                                                   "and /api/...; default [/]")

    @field_validator("hosts")
    @classmethod
    def _distinct_hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len({x.lower() for x in v}) != len(v):
            raise ValueError("a host name is listed twice")
        return v

    @field_validator("paths")
    @classmethod
    def _distinct_paths(cls, v: list[str]) -> list[str]:
        if len({x.rstrip("/") for x in v}) != len(v):
            raise ValueError("a path prefix is listed twice (/a and /a/ are one prefix)")
        return v


class Apache(Strict):
    server_name: Hostname | None = None
    aliases: list[WildcardHostname] = []


class Monitor(Strict):
    notify: list[Name] = []
    enabled: bool = True


class Backend(Strict):
    """One backend of a service: a node, or a host Salt does not manage (with an address)."""

    address: IPStr | None = None
    weight: int = Field(100, ge=0, le=256)
    backup: bool = False
    state: State = "active"


def _backends(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, list):
        out: dict[Any, Any] = {}
        for item in value:
            if isinstance(item, dict):
                out.update(item)
            elif isinstance(item, str):
                out[item] = {}
            else:
                raise ValueError(f"a backend is a node id or a mapping, not {item!r}")
        return out
    if isinstance(value, dict):
        return {k: ({} if v is None else v) for k, v in value.items()}
    return value


Backends = Annotated[dict[Name, Backend], BeforeValidator(_backends),
                     WithJsonSchema({"anyOf": [{"type": "array", "items": {"type": "string"}},
                                               {"type": "object", "additionalProperties": Backend.model_json_schema()}]})]

Balance = Literal["roundrobin", "static-rr", "leastconn", "first", "source", "uri", "url_param",
                  "hdr", "random", "rdp-cookie"]


class Service(Strict):
    """A service or template; required keys are checked after the template chain resolves."""

    extends: str | None = None
    mode: Literal["http", "tcp", "anycast"] | None = None
    vip: StrList = []
    ports: PortList = []
    backend_port: BackendPort | None = Field(
        None, description="port on the backends: one for every port, or a mapping {frontend port: backend port}")
    cluster: str | None = None
    backends: Backends = {}
    balance: Balance = "roundrobin"
    check: Check = Check()
    allow: StrList = ["any"]
    tls: Tls | None = None
    redirect_http: bool = False
    apache: Apache | None = None
    monitor: Monitor = Monitor()
    allow_node_ports: list[PortNumber] = Field([], description="VIP or backend ports that may be ports the "
                                                              "node serves itself (ssh, BGP, Salt ...)")
    description: Text | None = None
    haproxy: HaproxySettings | None = Field(None, description="per-service HAProxy settings (http and tcp modes)")
    steering: bool | None = Field(None, description="anycast services: hand the packets of tcp flows a backend "
                                                    "does not own to the other backends (docs/steering.md); "
                                                    "default: on with more than one backend")
    route: Route | None = Field(None, description="share the service's VIP:ports with other services, routed by "
                                                  "host and path prefix (mode http)")

    @field_validator("allow")
    @classmethod
    def _allow_prefixes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("allow may not be empty: write [any] to allow everyone")
        out = []
        for i, item in enumerate(v):
            if item == "any":
                out.append(item)
                continue
            try:
                out.append(str(parse_net(item)))
            except ValueError:
                raise ValueError(f"allow[{i}]: {str(item)[:50]!r} is neither 'any' nor a network prefix "
                                 f"such as 198.51.100.0/24") from None
        return out


class Limits(Strict):
    """Fleet-wide bounds a root file may set."""

    max_pool_v4: int = Field(16, ge=8, le=32, description="the widest IPv4 vip_pools prefix (default /16)")
    max_pool_v6: int = Field(48, ge=16, le=128, description="the widest IPv6 vip_pools prefix (default /48)")


def _prefix_list(v: list[str]) -> list[str]:
    return [str(parse_net(x)) for x in v]


class Tenant(Strict):
    """A department's lanes: the files it writes and what its services may claim (root files only)."""

    files: Annotated[StrList, Field(min_length=1, description="globs relative to the catalog directory")]
    vip_prefixes: Annotated[StrList, AfterValidator(_prefix_list)] = Field(
        [], description="every VIP of the tenant's services lies in one of these")
    hostnames: list[Hostname] = Field([], description="suffixes: server_name, aliases, check hosts and route "
                                                      "hosts are one of these or below one")
    clusters: list[Name] = Field([], description="the clusters its services may use")
    nodes: list[Name] = Field([], description="the managed nodes its services may use as backends")
    backend_prefixes: Annotated[StrList, AfterValidator(_prefix_list)] | None = Field(
        None, description="where its external backends may be (default: anywhere)")
    certificates: list[Name] = Field([], description="the certificates its services may terminate with")
    description: Text | None = None

    @field_validator("files")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        for g in v:
            if not isinstance(g, str) or not g or g.startswith("/") or ".." in g.split("/") or not g.isprintable():
                raise ValueError(f"{str(g)[:60]!r} is not a glob relative to the catalog directory, "
                                 "such as library/*.yaml")
        return v


class CatalogSchema(Strict):
    """The whole catalog, for the JSON Schema export (the compiler validates object by object)."""

    model_config = ConfigDict(extra="forbid", title="anycastlb service catalog")
    bgp: Bgp
    vip_pools: StrList = []
    management: StrList = []
    firewall: Firewall = Field(default_factory=Firewall)
    limits: Limits = Field(default_factory=Limits)
    tenants: dict[Name, Tenant] = {}
    monitoring: Monitoring = Field(default_factory=Monitoring)
    contacts: dict[Name, Contact] = {}
    acme: Acme | None = None
    defaults: Service = Field(default_factory=Service)
    nodes: dict[Name, Node] = {}
    peers: dict[Name, Peer] = {}
    clusters: dict[Name, Cluster] = {}
    templates: dict[Name, Service] = {}
    services: dict[Name, Service] = {}


def json_schema() -> dict[str, Any]:
    """The catalog's JSON Schema (draft 2020-12), for editors and users' CI."""
    schema = CatalogSchema.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    fw = schema["$defs"]["Node"]["properties"]["firewall"]
    fw["anyOf"] = [{"const": "unmanaged"}] + fw["anyOf"]   # the BeforeValidator's shorthand
    return schema
