"""The verdict on a catalog before anything is applied: a fleet, or every error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..compiler import Fleet
from ..pillar import FleetCache

#: This process's compilations, reused while no file of the catalog (or the secrets) changes:
#: an orchestration runs every runner step in one process, so its lint, plan, drains and
#: undrains compile the catalog once, not once each (about 1 s each at 1,000 services).
CACHE = FleetCache()


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
    """Compile ``catalog`` (with the secrets store when given; once per change of their files: :data:`CACHE`);
    never raises on a bad catalog."""
    if not catalog:
        return Lint(False, "", "no catalog configured (ext_pillar anycastlb: catalog: ...)",
                    ["the master's ext_pillar has no anycastlb entry with a catalog"])
    compiled = CACHE.get(catalog, secrets)
    if compiled.refused is not None:
        errors = [str(e) for e in compiled.refused.errors]
        return Lint(False, catalog, f"catalog refused: {len(errors)} error(s): nothing is applied", errors)
    fleet = compiled.fleet
    assert fleet is not None  # not refused
    s = fleet.summary
    return Lint(True, catalog, f"catalog ok: {s['services']} services, {s['vips']} VIPs, {s['nodes']} nodes, "
                               f"{s['clusters']} clusters", [], fleet)
