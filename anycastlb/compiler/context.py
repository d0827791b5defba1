"""Validation state and its tools: the error context, pydantic errors in our words, names,
prefixes and the template chain (``extends``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Iterator, cast

from pydantic import BaseModel, ValidationError

from .. import schema as S
from ..errors import CatalogError
from ..loader import Marked, MarkedList, file_of, line_of
from .base import IP, MAX_EXTENDS, SECTION_KIND, Net, deep_merge, ident


def _where(obj: Any, path: Iterable[Any]) -> tuple[str | None, int | None]:
    """File and line of ``path`` inside a (possibly merged) marked object."""
    path = list(path)
    file, line = line_of(obj, path)
    # In a merged mapping, a top key remembers the file of the layer that supplied it.
    if path and isinstance(obj, Marked):
        key_files = getattr(obj, "key_files", {})
        if path[0] in key_files and key_files[path[0]]:
            sub = obj.get(path[0])
            file = getattr(sub, "file", None) or key_files[path[0]] or file
    return file, line


@dataclass
class _Ctx:
    """Compilation state: the raw catalog, validated objects, and collected errors."""

    raw: Marked
    name: str
    errors: list[CatalogError] = field(default_factory=list)

    def err(self, section: str, name: str, key: str, message: str, obj: Any = None,
            path: Iterable[Any] = ()) -> None:
        """Record an error on ``section[name]`` at ``key`` (``path`` locates the line)."""
        sec = self.raw.get(section) if section in self.raw else None
        file, line = None, None
        if obj is not None:
            file, line = _where(obj, list(path) or key.split(".") if key else [])
        if file is None or line is None:
            if isinstance(sec, Marked) and name in sec:
                f2, l2 = line_of(sec, [name] + (list(path) if path else (key.split(".") if key else [])))
                file = file or file_of(sec, name) or f2
                line = line or l2
            elif isinstance(sec, Marked):
                file = file or sec.file
                line = line or (self.raw.marks.get(section) if not key else line_of(sec, key.split("."))[1])
        kind = SECTION_KIND.get(section, section)
        self.errors.append(CatalogError(file or self.name, line, kind, name, key, message))


#: pydantic's error types in our words: what was expected.
_EXPECTED = {
    "dict_type": "a mapping of keys", "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
    "list_type": "a list", "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "a whole number", "bool_type": "true or false", "bool_parsing": "true or false",
    "float_type": "a number", "float_parsing": "a number", "none_required": "null",
    "string_too_long": "a shorter string", "too_long": "a shorter list",
}


def _shown(value: Any) -> str:
    """A value as an error message shows it (short, one line)."""
    text = repr(value) if not isinstance(value, (dict, list)) else ("a mapping" if isinstance(value, dict)
                                                                   else "a list")
    return text if len(text) <= 60 else text[:57] + "..."


def _message(e: Any, loc: tuple[Any, ...]) -> str:
    """One pydantic error in our own words, showing the expected form."""
    kind, msg, value = e["type"], e["msg"], e.get("input")
    if kind == "extra_forbidden":
        return f"unknown key {str(loc[-1])!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"{_shown(value)} is not allowed: {msg.replace('Input should be ', 'expected ')}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        return f"{_shown(value)} is out of range: {msg[0].lower()}{msg[1:]}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        cls = getattr(S, str((e.get("ctx") or {}).get("class_name", "")), None)
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            keys = ", ".join(cls.model_fields)
            return f"{_shown(value)} is not a mapping: expected a mapping with the keys {keys}"
        return f"{_shown(value)} is not a mapping: expected a mapping of keys"
    if kind in _EXPECTED:
        return f"{_shown(value)} is not {_EXPECTED[kind]}" if kind not in ("missing",) else _EXPECTED[kind]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{_shown(value)} is not of the expected type ({kind.split('_')[0]})"
    return msg[0].lower() + msg[1:] if msg else kind


def _pydantic(ctx: _Ctx, model: type[BaseModel], data: Any, section: str, name: str,
              obj: Any = None, prefix: tuple[Any, ...] = ()) -> Any:
    """Validate ``data`` with ``model``; turn pydantic errors into catalog errors (in our words)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        seen: set[tuple[Any, ...]] = set()
        for e in exc.errors(include_url=False):
            raw_loc = tuple(e["loc"])
            bad_key = "[key]" in raw_loc
            loc = tuple(x for x in raw_loc if not (isinstance(x, str) and ("[" in x or x.startswith("function-"))))
            # Union branches repeat one location; keep the first message per location.
            loc = tuple(x for x in loc if x not in ("int", "str", "list[str]", "is-instance[Port]"))
            where = list(prefix + loc)
            if bad_key and loc:
                loc = loc[:-1]     # a bad name: the key is the mapping that holds it
            if loc in seen:
                continue
            seen.add(loc)
            key = ".".join(str(x) for x in prefix + loc)
            ctx.err(section, name, key, _message(e, loc), obj if obj is not None else data, where)
        return None


def _parse_net(text: Any) -> Net | None:
    try:
        return S.parse_net(text)
    except ValueError:
        return None


def _parse_ip(text: Any) -> IP | None:
    try:
        return S.parse_ip(text)
    except ValueError:
        return None


#: Name prefixes the renderers use for objects of their own (apache's catch-all sites
#: ``anycastlb-000-default-<port>``, Icinga's VIP hosts ``vip-<service>``).
RESERVED_PREFIXES = {"services": ("000-default",), "nodes": ("vip-",), "peers": ("vip-",),
                     "backends": ("vip-",)}


def _section(ctx: _Ctx, key: str) -> Marked:
    value = ctx.raw.get(key)
    if value is None:
        return Marked(file=ctx.name)
    if not isinstance(value, dict):
        ctx.err("catalog", "", key, f"section {key!r} must be a mapping")
        return Marked(file=ctx.name)
    return cast(Marked, value)  # the loader builds every mapping as a Marked


def _check_name(ctx: _Ctx, section: str, name: Any) -> bool:
    if not isinstance(name, str) or not re.fullmatch(S.NAME_RE, name):
        ctx.err(section, str(name)[:80], "", f"{str(name)[:80]!r} is not a valid name: a letter or digit, then "
                f"up to 62 letters, digits, '.', '_' or '-' (e.g. web-1)")
        return False
    for prefix in RESERVED_PREFIXES.get(section, ()):
        if name.lower().startswith(prefix):
            ctx.err(section, name, "", f"names starting with {prefix!r} are reserved for objects the renderers "
                    f"generate themselves (rename it)")
            return False
    return True


def _check_distinct(ctx: _Ctx, groups: list[tuple[str, Iterable[str]]]) -> None:
    """Names must stay distinct after ``ident()`` and case folding (BIRD, Icinga, file names)."""
    seen: dict[str, tuple[str, str]] = {}
    for section, names in groups:
        for name in names:
            key = ident(name).lower()
            first = seen.get(key)
            if first is None:
                seen[key] = (section, name)
            elif first != (section, name):
                ctx.err(section, name, "", f"{name!r} and {SECTION_KIND.get(first[0], first[0])} {first[1]!r} "
                        f"become the same identifier {ident(name)!r} in the daemons' configs: rename one")


def _objects(ctx: _Ctx, section: str, model: type[BaseModel]) -> Iterator[tuple[str, Any, Any]]:
    """(name, raw body, validated object) of each object of ``section`` whose name and body are valid."""
    for name, body in _section(ctx, section).items():
        if _check_name(ctx, section, name):
            obj = _pydantic(ctx, model, body if body is not None else {}, section, name, body)
            if obj is not None:
                yield name, body, obj

def _prefixes(ctx: _Ctx, key: str) -> list[Net]:
    raw = ctx.raw.get(key) or []
    if not isinstance(raw, list):
        raw = MarkedList([raw], file=ctx.name)
    out: list[Net] = []
    for i, text in enumerate(raw):
        net = _parse_net(text)
        if net is None:
            file, line = line_of(raw, [i])
            ctx.errors.append(CatalogError(file or ctx.name, line, key, "", f"{key}[{i}]",
                                           f"{text!r} is not a network prefix (host bits must be zero)"))
        else:
            out.append(net)
    return out


def _resolve(ctx: _Ctx, name: str, templates: Marked, defaults: Any, section: str,
             body: Any) -> Marked | None:
    """defaults < template chain < the object itself; refuses missing templates and cycles."""
    chain: list[Any] = [body]
    seen = [name] if section == "templates" else []
    cur = body
    while isinstance(cur, dict) and cur.get("extends") is not None:
        parent = cur["extends"]
        if not isinstance(parent, str) or parent not in templates:
            where = "template" if isinstance(parent, str) and parent in _section(ctx, "services") else ""
            hint = f" ({parent!r} is a service, not a template)" if where else ""
            ctx.err(section, name, "extends", f"template {parent!r} does not exist{hint}", cur, ["extends"])
            return None
        if parent in seen:
            cycle = " -> ".join(seen + [parent])
            ctx.err(section, name, "extends", f"extends cycle: {cycle}", cur, ["extends"])
            return None
        if len(chain) > MAX_EXTENDS:
            ctx.err(section, name, "extends", f"the extends chain is deeper than {MAX_EXTENDS} templates "
                    f"({' -> '.join(seen[:3] + ['...'] + seen[-2:])})", body, ["extends"])
            return None
        seen.append(parent)
        cur = templates[parent]
        chain.append(cur)
    merged: Any = defaults if isinstance(defaults, dict) else Marked()
    for layer in reversed(chain):
        if not isinstance(layer, dict):
            ctx.err(section, name, "", "must be a mapping of keys")
            return None
        merged = deep_merge(merged, layer)
    merged.pop("extends", None)
    return merged


@dataclass
class _Svc:
    """A resolved, validated service plus its normalised addresses."""

    name: str
    model: S.Service
    raw: Marked
    vips: list[IP]
    ports: list[S.Port]

    @cached_property
    def vip_texts(self) -> list[str]:
        """``vips`` as text, once (an IPv6 address is dear to print, and every node model prints them)."""
        return [str(ip) for ip in self.vips]


def _dedupe(errors: list[CatalogError]) -> list[CatalogError]:
    """One error per place: a bad value in defaults or a template is reported once, where it is
    written, not again for every service that inherits it (the first reporter, in the order
    defaults, templates, services, is the owner)."""
    seen: set[tuple[str, int | None, str, str]] = set()
    out = []
    for e in errors:
        k = (e.file, e.line, e.key, e.message)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def _tenant_of(ctx: _Ctx, file: str | None) -> str | None:
    """The tenant whose files include ``file``, or None for a root (fleet-wide) file."""
    return getattr(ctx.raw, "file_tenants", {}).get(file) if file else None
