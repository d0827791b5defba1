"""The pillar side of Salt, without Salt: one minion's slice of a compiled catalog.

``_pillar/anycastlb.py`` (the ext_pillar) is a thin adapter over :func:`node_pillar`.
A master compiles pillar for every minion; the compiled fleet (or the refusal) is
cached per process and keyed by the (path, mtime_ns, size) of every catalog file
and of the secrets file, so 500 minions cost one compilation, and an edited
catalog is picked up on the next pillar refresh without restarting the master.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass
from typing import Any

from .compiler import Fleet, compile_catalog
from .errors import CatalogError, CatalogRefused
from .loader import catalog_files
from .secrets import load_secrets, slice_for

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
            st = os.stat(p)
            out.append((p, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((p, -1, -1))
    return tuple(out)


@dataclass
class Compiled:
    """One compilation: the fleet and the secrets store, or the refusal."""

    key: FileKey
    fleet: Fleet | None
    store: dict[str, Any] | None
    refused: CatalogRefused | None


class FleetCache:
    """The last compilation per (catalog, secrets) pair, reused while no file changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str | None], Compiled] = {}
        self.compilations = 0

    def get(self, catalog: str, secrets: str | None = None) -> Compiled:
        """The fleet for these files, compiled at most once per change of the files."""
        with self._lock:
            try:
                key = files_key(catalog, secrets)
            except CatalogRefused as exc:  # no catalog at all: nothing to cache
                return Compiled((), None, None, exc)
            entry = self._entries.get((catalog, secrets))
            if entry is not None and entry.key == key:
                return entry
            self.compilations += 1
            try:
                store = load_secrets(secrets) if secrets else None
                fleet = compile_catalog(catalog, secrets=store)
                entry = Compiled(key, fleet, store, None)
            except CatalogRefused as exc:
                entry = Compiled(key, None, None, exc)
            self._entries[(catalog, secrets)] = entry
            return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: One cache per process (a Salt master compiles pillar in its worker processes).
CACHE = FleetCache()


def _refuse(where: str, message: str) -> CatalogRefused:
    return CatalogRefused([CatalogError(where, None, "ext_pillar", "anycastlb", "", message)])


def node_pillar(minion_id: str, catalog: str, secrets: str | None = None,
                service_mode: str | None = None, cache: FleetCache = CACHE) -> dict[str, Any]:
    """``{"anycastlb": model + {"secrets": values}}`` for a minion the catalog names, else ``{}``.

    ``model["secrets"]`` (the names) is replaced by the values this node uses, and
    nothing else of the store. Raises :class:`CatalogRefused` with every error of a
    bad catalog, whichever minion asks: a refused catalog deploys nothing anywhere.
    """
    if not catalog:
        raise _refuse("master config", "ext_pillar anycastlb needs 'catalog: <file or directory>'")
    if service_mode is not None and service_mode not in SERVICE_MODES:
        raise _refuse("master config", f"service_mode {service_mode!r} is not one of {', '.join(SERVICE_MODES)}")
    compiled = cache.get(str(catalog), str(secrets) if secrets else None)
    if compiled.refused is not None:
        raise compiled.refused
    assert compiled.fleet is not None
    model = compiled.fleet.nodes.get(minion_id)
    if model is None:
        return {}
    data = copy.deepcopy(model)
    data["secrets"] = slice_for(model["secrets"], compiled.store or {})
    if service_mode:
        data["service_mode"] = service_mode
    return {PILLAR_KEY: data}
