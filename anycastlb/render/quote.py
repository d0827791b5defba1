"""Quoting at the exit: one filter per config dialect, registered in the one Jinja environment.

The schema constrains every catalog string at the door; these filters are the
second line. Each one turns a value into a token its dialect reads back as
exactly that value (a quoted string, an escaped literal), or refuses it with a
:class:`~anycastlb.render.RenderError` when the dialect cannot carry it safely:
line breaks, NUL and other control characters, the Unicode line and paragraph
separators and bidi overrides are refused everywhere, never emitted. Names used
as identifiers (HAProxy proxies and servers, BIRD protocols, Icinga2 objects)
must match their dialect's identifier grammar whole.

Every filter returns :class:`Quoted`. The environment's ``finalize`` lets a
``{{ ... }}`` print a :class:`Quoted`, a number, or a plain string made only of
inert characters (letters, digits, ``_.:/@%+,=-``); anything else raises, so a
template that forgets a filter fails to render instead of emitting raw text.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import quote as _urlquote

import jinja2

from .. import httpstatus
from . import RenderError


class Quoted(str):
    """Text already made safe for the dialect it is printed into."""


#: Characters no config dialect here can carry safely: C0/C1 controls (tab and line
#: breaks included), DEL, U+2028/U+2029 (line/paragraph separators), bidi controls, BOM.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
#: What a plain (unfiltered) string may contain to be printed as is.
INERT = re.compile(r"[A-Za-z0-9_.:/@%+,=-]*")


def carry(value: Any, dialect: str, what: str = "value") -> str:
    """``value`` as text, refused if it holds a character ``dialect`` cannot carry safely."""
    text = str(value)
    bad = UNSAFE.search(text)
    if bad:
        raise RenderError(f"{dialect}: {what} {text!r} holds U+{ord(bad.group()):04X}, "
                          "which the config cannot carry safely")
    return text


def _ident(value: Any, dialect: str, grammar: re.Pattern[str], what: str) -> Quoted:
    text = carry(value, dialect, what)
    if not grammar.fullmatch(text):
        raise RenderError(f"{dialect}: {what} {text!r} is not a valid identifier here "
                          f"(allowed: {grammar.pattern})")
    return Quoted(text)


# ----------------------------------------------------------------- HAProxy

_HAPROXY_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


def haproxy(value: Any) -> Quoted:
    """An HAProxy argument in weak (double) quotes: ``\\``, ``"`` and ``$`` escaped (manual 2.2)."""
    text = carry(value, "haproxy")
    return Quoted('"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"')


def haproxy_lf(value: Any) -> Quoted:
    """An HAProxy log-format argument (``hdr <name> <fmt>``): ``%`` doubled, then quoted."""
    return haproxy(carry(value, "haproxy").replace("%", "%%"))


def haproxy_name(value: Any) -> Quoted:
    """A proxy or server name: letters, digits, ``-_.:`` only (HAProxy's own rule)."""
    return _ident(value, "haproxy", _HAPROXY_NAME, "name")


# ----------------------------------------------------------------- apache2


def apache(value: Any) -> Quoted:
    """An apache directive argument in double quotes (``\\\\`` and ``\\"`` escaped, ap_getword_conf).

    ``${`` is refused: apache expands ``${VAR}`` on the whole line before any quoting.
    """
    text = carry(value, "apache2")
    if "${" in text:
        raise RenderError(f"apache2: {text!r} holds '${{', which apache expands as a variable")
    return Quoted('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')


def apache_header(value: Any) -> Quoted:
    """A mod_headers value (a format string): ``%`` doubled, then quoted."""
    return apache(carry(value, "apache2").replace("%", "%%"))


# ----------------------------------------------------------------- BIRD

_BIRD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def bird(value: Any) -> Quoted:
    """A BIRD string literal. BIRD 2.0 strings have no escapes at all (a backslash is
    kept as it is, tried with bird 2.0.12), so a ``"`` cannot be carried and is refused."""
    text = carry(value, "bird")
    if '"' in text:
        raise RenderError(f"bird: {text!r} holds a double quote, which BIRD strings cannot carry")
    return Quoted(f'"{text}"')


def bird_name(value: Any) -> Quoted:
    """A BIRD symbol (protocol name): ``[A-Za-z_][A-Za-z0-9_]*``."""
    return _ident(value, "bird", _BIRD_NAME, "protocol name")


# ----------------------------------------------------------------- nftables


def nft(value: Any) -> Quoted:
    """An nft quoted string; nft has no escape for ``"``, so one is refused."""
    text = carry(value, "nftables")
    if '"' in text:
        raise RenderError(f"nftables: {text!r} holds a double quote, which nft strings cannot carry")
    return Quoted(f'"{text}"')


def nft_comment(value: Any) -> Quoted:
    """An nft rule comment: free text, so ``"`` becomes ``'``; at most 128 bytes."""
    text = carry(value, "nftables", "comment").replace('"', "'")
    return Quoted('"' + text.encode()[:128].decode(errors="ignore") + '"')


# ----------------------------------------------------------------- Icinga2

#: Icinga2 object names: no ``!`` (it joins host and service names), no quotes or macros.
_ICINGA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:/@\[\]()-]*")


def icinga(value: Any) -> Quoted:
    """An Icinga2 DSL literal: string (escaped), number, bool, null, or an array of those."""
    if value is None:
        return Quoted("null")
    if isinstance(value, bool):
        return Quoted("true" if value else "false")
    if isinstance(value, (int, float)):
        return Quoted(str(value))
    if isinstance(value, (list, tuple)):
        return Quoted("[ " + ", ".join(icinga(v) for v in value) + " ]" if value else "[]")
    text = carry(value, "icinga2")
    return Quoted('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')


def icinga_macro(value: Any) -> Quoted:
    """A custom variable a check command uses: as :func:`icinga`, with ``$`` doubled.

    Icinga2 resolves ``$name$`` macros in such values at run time (recursively);
    ``$$`` is its literal dollar.
    """
    if isinstance(value, (list, tuple)):
        return Quoted("[ " + ", ".join(icinga_macro(v) for v in value) + " ]" if value else "[]")
    if isinstance(value, str):
        return icinga(carry(value, "icinga2").replace("$", "$$"))
    return icinga(value)


def icinga_name(value: Any) -> Quoted:
    """An Icinga2 object name, quoted: it must match the object-name grammar whole."""
    return icinga(_ident(value, "icinga2", _ICINGA_NAME, "object name"))


def icinga_names(values: Any) -> Quoted:
    """An Icinga2 array of object names (``users = [ "netops" ]``)."""
    return Quoted("[ " + ", ".join(icinga_name(v) for v in values) + " ]" if values else "[]")


# ----------------------------------------------------------------- comments, JSON, addresses


def comment(value: Any) -> Quoted:
    """Text inside a ``#`` comment: one line; backslashes become ``/`` (apache continues a line
    that ends in one, comments included)."""
    text = carry(value, "config", "comment text")
    return Quoted(text.replace("\\", "/"))


def c_comment(value: Any) -> Quoted:
    """Text inside a ``/* */`` comment (Icinga2): one line and no ``*/``."""
    return Quoted(comment(value).replace("*/", "* /"))


def tojson(value: Any, indent: int | None = None) -> Quoted:
    """A JSON value, every non-ASCII character escaped; unsafe characters in strings refused."""
    _walk(value, lambda s: carry(s, "json"))
    return Quoted(json.dumps(value, ensure_ascii=True, sort_keys=True, indent=indent))


def _walk(value: Any, check: Any) -> None:
    if isinstance(value, str):
        check(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(k, check)
            _walk(v, check)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk(v, check)


def ip(value: Any) -> Quoted:
    """An IP address, normalised; anything else is refused."""
    try:
        return Quoted(str(ipaddress.ip_address(str(value))))
    except ValueError:
        raise RenderError(f"{carry(value, 'config', 'address')!r} is not an IP address") from None


def prefix(value: Any) -> Quoted:
    """An IP prefix (``192.0.2.0/24``), normalised; anything else is refused."""
    try:
        return Quoted(str(ipaddress.ip_network(str(value), strict=False)))
    except ValueError:
        raise RenderError(f"{carry(value, 'config', 'prefix')!r} is not an IP prefix") from None


def port(value: Any) -> Quoted:
    """A port number 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise RenderError(f"{value!r} is not a port number")
    return Quoted(str(value))


def ints(values: Any) -> Quoted:
    """Integers joined by ``, `` (a BGP community's parts); anything but an integer is refused."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise RenderError(f"{v!r} is not an integer")
        out.append(str(v))
    return Quoted(", ".join(out))


def hostport(address: Any, number: Any) -> Quoted:
    """``192.0.2.1:80`` or ``[2001:db8::1]:80``, the address checked."""
    addr, p = ip(address), port(int(number) if isinstance(number, str) and number.isdigit() else number)
    return Quoted(f"[{addr}]:{p}" if ":" in addr else f"{addr}:{p}")


# ----------------------------------------------------------------- HTTP: request targets and status codes

#: Characters left as they are in a request target (RFC 3986 pchar, "/" and "?", and "%").
_PCHAR = "/?:@!$&'()*+,;=-._~%"


def request_target(path: Any, dialect: str = "config") -> str:
    """A check path as an HTTP request target: starts with ``/``; what RFC 3986 does not allow is
    percent-encoded (a space becomes ``%20``, ``#`` ``%23``), so every client sends the same bytes."""
    text = carry(path if path is not None else "/", dialect, "check path")
    if not text.startswith("/"):
        text = "/" + text
    return _urlquote(text, safe=_PCHAR)


def status_ranges(expect: Any) -> httpstatus.Ranges:
    """HTTP status codes as inclusive ranges (:mod:`anycastlb.httpstatus`); refused as a RenderError."""
    try:
        return httpstatus.parse(carry(expect, "config", "status code") if isinstance(expect, str) else expect)
    except ValueError as exc:
        raise RenderError(str(exc)) from None


FILTERS = {
    "haproxy": haproxy, "haproxy_lf": haproxy_lf, "haproxy_name": haproxy_name,
    "apache": apache, "apache_header": apache_header,
    "bird": bird, "bird_name": bird_name,
    "nft": nft, "nft_comment": nft_comment,
    "icinga": icinga, "icinga_macro": icinga_macro, "icinga_name": icinga_name,
    "icinga_names": icinga_names,
    "comment": comment, "c_comment": c_comment, "tojson": tojson,
    "ip": ip, "prefix": prefix, "port": port, "hostport": hostport, "ints": ints,
}


@jinja2.pass_eval_context
def finalize(eval_ctx: Any, value: Any) -> Any:
    """What a ``{{ ... }}`` may print: quoted text, a number, or an inert plain string.

    In an autoescaped (HTML) template everything is escaped anyway and passes.
    """
    if eval_ctx.autoescape or isinstance(value, (Quoted, int, float)):
        return value
    text = str(value)
    if INERT.fullmatch(text):
        return text
    raise RenderError(f"template: {text!r} reached a config without a quoting filter")
