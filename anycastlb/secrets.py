"""The secrets store: TLS certificates and BGP passwords, kept apart from the catalog.

A YAML file (or the equivalent pillar data)::

    certificates:
      campus-wildcard: {cert: "-----BEGIN CERTIFICATE-----...", key: "-----BEGIN PRIVATE KEY-----..."}
    bgp_passwords:
      fleet: "s3cret"

The catalog only names secrets; :func:`slice_for` hands a node the ones it uses.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import yaml

from .errors import CatalogError, CatalogRefused


def load_secrets(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a secrets file; a missing or malformed file is refused with its name."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise CatalogRefused([CatalogError(str(path), None, "secrets", "", "", f"cannot read: {exc.strerror}")])
    except yaml.YAMLError as exc:
        raise CatalogRefused([CatalogError(str(path), None, "secrets", "", "", f"not valid YAML: {exc}")])
    if not isinstance(data, dict):
        raise CatalogRefused([CatalogError(str(path), None, "secrets", "", "", "must be a mapping")])
    return normalise(data)


def normalise(data: Mapping[str, Any]) -> dict[str, Any]:
    """Only the two known sections, as plain dicts."""
    return {"certificates": dict(data.get("certificates") or {}),
            "bgp_passwords": dict(data.get("bgp_passwords") or {})}


def slice_for(names: Mapping[str, list[str]], store: Mapping[str, Any]) -> dict[str, Any]:
    """The secret values a node uses, given the names in its model."""
    store = normalise(store)
    return {"certificates": {n: store["certificates"][n] for n in names.get("certificates", [])
                             if n in store["certificates"]},
            "bgp_passwords": {n: store["bgp_passwords"][n] for n in names.get("bgp_passwords", [])
                              if n in store["bgp_passwords"]}}
