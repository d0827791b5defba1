"""Refusals: every message names the file, the line, the object and the key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class CatalogError:
    """One reason a catalog is refused.

    ``kind`` is the section the object lives in (``service``, ``node``,
    ``cluster``, ``template``, ``peer``, ``bgp`` ...), ``name`` the object's
    name, ``key`` the dotted key inside it.
    """

    file: str
    line: int | None
    kind: str
    name: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.kind} {self.name!r}" if self.name else self.kind
        key = f", key {self.key!r}" if self.key else ""
        return f"{where}: {what}{key}: {self.message}"


class CatalogRefused(Exception):
    """The catalog has errors; nothing may be deployed from it."""

    def __init__(self, errors: list[CatalogError]):
        self.errors = sorted(set(errors), key=lambda e: (e.file, e.line or 0, e.kind, e.name, e.key, e.message))
        super().__init__(self.summary())

    def summary(self) -> str:
        """All errors, one per line."""
        head = f"catalog refused: {len(self.errors)} error(s)"
        return "\n".join([head] + [f"  {e}" for e in self.errors])
