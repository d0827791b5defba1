"""The verdict on a catalog before anything is applied: a fleet, or every error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..compiler import Fleet, compile_catalog
from ..errors import CatalogRefused


@dataclass
class Lint:
    """The verdict on a catalog: a fleet, or every error."""

    ok: bool
    catalog: str
    summary: str
    errors: list[str] = field(default_factory=list)
    fleet: Fleet | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.ok, "catalog": self.catalog, "comment": self.summary, "errors": self.errors}


def lint(catalog: str, secrets: str | None = None) -> Lint:
    """Compile ``catalog`` (with the secrets store when given); never raises on a bad catalog."""
    if not catalog:
        return Lint(False, "", "no catalog configured (ext_pillar anycastlb: catalog: ...)",
                    ["the master's ext_pillar has no anycastlb entry with a catalog"])
    try:
        store = None
        if secrets:
            from ..secrets import load_secrets
            store = load_secrets(secrets)
        fleet = compile_catalog(catalog, secrets=store)
    except CatalogRefused as exc:
        errors = [str(e) for e in exc.errors]
        return Lint(False, catalog, f"catalog refused: {len(errors)} error(s): nothing is applied", errors)
    s = fleet.summary
    return Lint(True, catalog, f"catalog ok: {s['services']} services, {s['vips']} VIPs, {s['nodes']} nodes, "
                               f"{s['clusters']} clusters", [], fleet)
