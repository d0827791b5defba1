"""What the compiler returns: a :class:`Fleet` whose node models are built on first access."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import CatalogError
from ..model import NodeModel


class NodeModels(Mapping[str, NodeModel]):
    """Node id → model, each computed on first access (a minion's slice costs one node's work)."""

    def __init__(self, ids: list[str], build: Any):
        self._ids = ids
        self._build = build
        self._cache: dict[str, NodeModel] = {}

    def __getitem__(self, node_id: str) -> NodeModel:
        m = self._cache.get(node_id)
        if m is None:
            if node_id not in self._ids_set:
                raise KeyError(node_id)
            m = self._cache[node_id] = self._build(node_id)
        return m

    @functools.cached_property
    def _ids_set(self) -> frozenset[str]:
        return frozenset(self._ids)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._ids_set


@dataclass
class Fleet:
    """A compiled catalog: the per-node models plus what the CLI's lint and diff show."""

    catalog: str
    nodes: Mapping[str, NodeModel]
    services: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    #: What lint reports without refusing (a cluster with no active node ...).
    warnings: list[CatalogError] = field(default_factory=list)
    #: Who owns what (``anycastlb owners``): root and each tenant's files, services, VIPs, names.
    owners: dict[str, Any] = field(default_factory=dict)

    def slice(self, node_id: str) -> NodeModel | None:
        """One node's model, or None for a node the catalog does not name."""
        return self.nodes[node_id] if node_id in self.nodes else None

    def to_json(self, node_id: str | None = None) -> str:
        """Deterministic JSON of one node's model, or of the whole fleet."""
        data: Any = self.nodes[node_id] if node_id else {"nodes": dict(self.nodes), "services": self.services}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
