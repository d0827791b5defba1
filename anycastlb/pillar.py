"""The pillar side of Salt, without Salt: one minion's slice of a compiled catalog.

``_pillar/anycastlb.py`` (the ext_pillar) is a thin adapter over :func:`node_pillar`.
A master compiles pillar for every minion; the compiled fleet (or the refusal) is
cached per process and keyed by the (path, mtime_ns, size) of every catalog file
and of the secrets file, so 500 minions cost one compilation, and an edited
catalog is picked up on the next pillar refresh without restarting the master.

On a shared master a refused catalog fails the pillar of the catalog's own nodes
only (:func:`catalog_nodes`: the ids under ``nodes:``, read leniently from the
broken files, plus the nodes of the last good compilation); every other minion
gets no anycastlb data and keeps working.
"""

from __future__ import annotations

import gc
import marshal
import os
import pickle
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .compiler import Fleet, compile_catalog
from .errors import CatalogError, CatalogRefused
from .loader import catalog_files, load_file
from .secrets import Decrypt, load_secrets, slice_for

#: The pillar key everything lives under.
PILLAR_KEY = "anycastlb"
SERVICE_MODES = ("direct", "systemd")

FileKey = tuple[tuple[str, int, int], ...]


def files_key(catalog: str, secrets: str | None = None) -> FileKey:
    """(path, mtime_ns, size) of every file the compilation reads; changes when any of them does."""
    paths = [str(p) for p in catalog_files(catalog)]
    if secrets:
        paths.append(str(secrets))
    out = []
    for p in paths:
        try:
            st = os.stat(p)  # the real path: a staged catalog's switch (a symlink) changes it
            out.append((os.path.realpath(p), st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((p, -1, -1))
    return tuple(out)


#: a model serialised, with the function that builds a copy from it
Frozen = tuple[Callable[[bytes], Any], bytes]


@dataclass
class Compiled:
    """One compilation: the fleet and the secrets store, or the refusal."""

    key: FileKey
    fleet: Fleet | None
    store: dict[str, Any] | None
    refused: CatalogRefused | None
    #: the minion ids this catalog is about (for a refusal: as far as they can be read)
    nodes: frozenset[str] = frozenset()
    #: a refusal was reported once for the minions it does not concern
    reported: bool = field(default=False, compare=False)
    #: each node's model serialised once (:func:`_freeze`): a slice is then one load of it, a
    #: private copy Salt may change (:func:`_private_copy`)
    frozen: dict[str, Frozen] = field(default_factory=dict, compare=False, repr=False)

    def model_copy(self, node: str) -> dict[str, Any] | None:
        """A private copy of ``node``'s model, or None when the fleet has no such node."""
        assert self.fleet is not None
        frozen = self.frozen.get(node)
        if frozen is None:
            model = self.fleet.nodes.get(node)
            if model is None:
                return None
            frozen = self.frozen[node] = _freeze(model)
        return _private_copy(frozen)


def _freeze(model: Any) -> Frozen:
    """``model`` serialised by :mod:`marshal` (plain dicts, lists and scalars, as the compiler
    builds them), else by :mod:`pickle` (a subclass or another type marshal refuses)."""
    try:
        return marshal.loads, marshal.dumps(model)
    except ValueError:
        return pickle.loads, pickle.dumps(model, pickle.HIGHEST_PROTOCOL)


def _private_copy(frozen: Frozen) -> dict[str, Any]:
    """A new object tree from a :func:`_freeze` result; objects the model shares stay shared.

    marshal builds it faster than pickle (no opcode machine, no memo entry per object).
    The cyclic garbage collector is paused meanwhile: at 1,000 services a slice is some
    30,000 new containers, alive while they are built, so with the collector on they went
    through the younger generations into the oldest, and every few slices a full
    collection walked every tracked object of the process (the compiled fleet among
    them): the slice's mean was two to three times its best, and grew faster than the
    catalog. A fresh tree of dicts and lists has no cycle to collect; the next collection
    scans it once, as young objects. The collector is left as it was (off if it was off).
    """
    load, blob = frozen
    enabled = gc.isenabled()
    gc.disable()
    try:
        copied: dict[str, Any] = load(blob)  # bytes this process wrote itself
    finally:
        if enabled:
            gc.enable()
    return copied


_TOP_NODES = re.compile(r"nodes\s*:\s*(#.*)?")
_NODE_KEY = re.compile(r"""(\s+)(?:"([^"]+)"|'([^']+)'|([^\s#:'"{}\[\],][^\s:#]*))\s*:(\s|$)""")


def _scan_nodes(text: str) -> set[str]:
    """The keys directly under a top-level ``nodes:`` block of YAML that may not parse."""
    names: set[str] = set()
    indent: str | None = None
    inside = False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            inside = bool(_TOP_NODES.fullmatch(line.rstrip()))
            indent = None
            continue
        if not inside:
            continue
        m = _NODE_KEY.match(line)
        if m and (indent is None or m.group(1) == indent):
            indent = m.group(1)
            names.add(m.group(2) or m.group(3) or m.group(4))
    return names


def catalog_nodes(catalog: str) -> frozenset[str]:
    """The minion ids the catalog's files name under ``nodes:``, read as leniently as possible.

    Each file is parsed on its own (so a duplicate across files or a schema error does
    not hide the names); a file that is not valid YAML is scanned line by line.
    """
    names: set[str] = set()
    try:
        files = catalog_files(catalog)
    except CatalogRefused:
        return frozenset()
    for f in files:
        try:
            doc = load_file(f)
        except CatalogRefused:
            try:
                names |= _scan_nodes(f.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                pass
            continue
        section = doc.get("nodes")
        if isinstance(section, dict):
            names |= {str(k) for k in section}
    return frozenset(names)


class FleetCache:
    """The last compilation per (catalog, secrets) pair, reused while no file changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str | None], Compiled] = {}
        self._good_nodes: dict[tuple[str, str | None], frozenset[str]] = {}
        self.compilations = 0

    def get(self, catalog: str, secrets: str | None = None, decrypt: Decrypt | None = None) -> Compiled:
        """The fleet for these files, compiled at most once per change of the files (``decrypt``:
        see :func:`anycastlb.secrets.load_secrets`)."""
        with self._lock:
            good = self._good_nodes.get((catalog, secrets), frozenset())
            try:
                key = files_key(catalog, secrets)
            except CatalogRefused as exc:  # no catalog at all: nothing to cache
                return Compiled((), None, None, exc, good)
            entry = self._entries.get((catalog, secrets))
            if entry is not None and entry.key == key:
                return entry
            self.compilations += 1
            try:
                store = load_secrets(secrets, decrypt) if secrets else None
                fleet = compile_catalog(catalog, secrets=store)
                entry = Compiled(key, fleet, store, None, frozenset(fleet.nodes))
                self._good_nodes[(catalog, secrets)] = entry.nodes
            except CatalogRefused as exc:
                entry = Compiled(key, None, None, exc, catalog_nodes(catalog) | good)
            self._entries[(catalog, secrets)] = entry
            return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._good_nodes.clear()


#: One cache per process (a Salt master compiles pillar in its worker processes).
CACHE = FleetCache()


def _refuse(where: str, message: str) -> CatalogRefused:
    return CatalogRefused([CatalogError(where, None, "ext_pillar", "anycastlb", "", message)])


def node_pillar(minion_id: str, catalog: str, secrets: str | None = None,
                service_mode: str | None = None, cache: FleetCache = CACHE,
                report: Callable[[str], None] | None = None, decrypt: Decrypt | None = None,
                acme_store: str | None = None) -> dict[str, Any]:
    """``{"anycastlb": model + {"secrets": values}}`` for a minion the catalog names, else ``{}``.

    ``model["secrets"]`` (the names) is replaced by the values this node uses, and
    nothing else of the store. A bad catalog (or ext_pillar option) raises
    :class:`CatalogRefused` with every error for the catalog's own nodes only: a
    refused catalog deploys nothing anywhere, and the master's other minions get
    ``{}`` and keep working. ``report`` is called once per refusal with its text
    (the adapter logs it), so the refusal is never silent on the master. ``decrypt``
    decrypts a ``#!yaml|gpg`` secrets file (the adapter passes Salt's GPG renderer).
    ``acme_store`` is the ACME issuer's certificate directory (default
    :data:`anycastlb.acme_issuer.DEFAULT_STORE`): a node receives the ACME certificates its
    frontends use from there (only the LB nodes of the service's cluster); one not issued yet
    is a self-signed placeholder written then, until ``salt-run anycastlb.renew`` issues it.
    """
    if not catalog:
        if report is not None:
            report("ext_pillar anycastlb needs 'catalog: <file or directory>': no minion gets anycastlb data")
        return {}
    compiled = cache.get(str(catalog), str(secrets) if secrets else None, decrypt)
    if service_mode is not None and service_mode not in SERVICE_MODES:
        refused = _refuse("master config", f"service_mode {service_mode!r} is not one of {', '.join(SERVICE_MODES)}")
        if minion_id in compiled.nodes:
            raise refused
        return {}
    if compiled.refused is not None:
        if minion_id in compiled.nodes:
            raise compiled.refused
        if report is not None and not compiled.reported:
            compiled.reported = True
            report(f"{compiled.refused} (the pillar of the catalog's nodes fails; the other minions get no "
                   f"anycastlb data)")
        return {}
    assert compiled.fleet is not None
    data = compiled.model_copy(minion_id)
    if data is None:
        return {}
    model = compiled.fleet.nodes[minion_id]
    store = compiled.store or {}
    wanted = model["secrets"].get("certificates", [])
    if any(n.startswith("acme-") for n in wanted):
        from .acme_issuer import DEFAULT_STORE, ensure_placeholders, load_store
        acme_dir = acme_store or DEFAULT_STORE
        issuer = next((m["acme"] for m in compiled.fleet.nodes.values() if m.get("acme")), None)
        if issuer is not None:
            try:   # before the first issuance: a placeholder, so HAProxy binds 443 and the challenge route is live
                ensure_placeholders(dict(issuer), acme_dir)
            except OSError as exc:
                if report is not None:
                    report(f"ACME store {acme_dir}: no placeholder could be written: {exc}")
        issued = {k: v for k, v in load_store(acme_dir).items() if k in wanted and k.startswith("acme-")}
        store = {**store, "certificates": {**(store.get("certificates") or {}), **issued}}
    data["secrets"] = slice_for(model["secrets"], store)
    if service_mode:
        data["service_mode"] = service_mode
    return {PILLAR_KEY: data}
