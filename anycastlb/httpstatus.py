"""HTTP status code sets as the catalog writes them: ``200``, ``"2xx"``, ``"200-299"``, ``"200,301-302"``.

One parser for the renderers (HAProxy's ``http-check expect status``, Icinga2's
``http_expect``) and for anycastlb-healthd's ``expect``.
"""

from __future__ import annotations

import re
from typing import Any

_CODE = re.compile(r"([1-5])([0-9][0-9]|xx|XX)")
_RANGE = re.compile(r"([1-5][0-9][0-9])-([1-5][0-9][0-9])")

Ranges = tuple[tuple[int, int], ...]


def parse(expect: Any) -> Ranges:
    """Inclusive ranges of the codes ``expect`` allows; :class:`ValueError` for anything else."""
    if isinstance(expect, bool):
        raise ValueError(f"{expect!r} is not an HTTP status code")
    if isinstance(expect, int):
        if 100 <= expect <= 599:
            return ((expect, expect),)
        raise ValueError(f"{expect!r} is not an HTTP status code (100-599)")
    if not isinstance(expect, str):
        raise ValueError(f"{expect!r} is not an HTTP status code")
    out: list[tuple[int, int]] = []
    for part in expect.replace(" ", "").split(","):
        m, r = _CODE.fullmatch(part), _RANGE.fullmatch(part)
        if m and m.group(2).isdigit():
            out.append((int(part), int(part)))
        elif m:
            out.append((int(m.group(1)) * 100, int(m.group(1)) * 100 + 99))
        elif r and int(r.group(1)) <= int(r.group(2)):
            out.append((int(r.group(1)), int(r.group(2))))
        else:
            raise ValueError(f"{expect!r} is not an HTTP status code, range (200-299) or class (2xx)")
    return tuple(out)


def text(ranges: Ranges) -> str:
    """``200,301-302``: the canonical text (HAProxy's ``status`` list)."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def codes(ranges: Ranges) -> list[int]:
    """Every code the ranges allow, sorted."""
    return sorted({c for a, b in ranges for c in range(a, b + 1)})


def allows(ranges: Ranges, code: int) -> bool:
    """Whether ``code`` is in one of the ranges."""
    return any(a <= code <= b for a, b in ranges)
