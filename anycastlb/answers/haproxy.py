"""What the core asks of HAProxy's ``show stat``: is a node's HAProxy serving after an apply,
and how many sessions do its frontends still hold (graceful drain).

Parsing is :func:`parse_show_stat` (re-exported from the HAProxy monitoring plugin, the
one parser of the format); the verdict per frontend/backend is the health agent's
(:func:`anycastlb.healthd.haproxy_verdict`), so a node is judged the same way by its
agent and by the orchestration.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..healthd import STAT_COMMAND, haproxy_verdict
from ..plugins.check_anycastlb_haproxy import parse_show_stat

__all__ = ["STAT_COMMAND", "parse_show_stat", "haproxy_verdict", "verify_haproxy", "frontend_sessions"]


def verify_haproxy(rows: Mapping[tuple[str, str], Mapping[str, str]], frontends: Iterable[str],
                   backends: Iterable[str], pending: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(problems, notes): every frontend OPEN and every backend UP with a server up.

    A backend in ``pending`` may be down (its servers are deployed later in the run):
    that is a note, not a problem. ``rows`` is :func:`parse_show_stat`.
    """
    problems: list[str] = []
    notes: list[str] = []
    for f in frontends:
        ok, why = haproxy_verdict(rows, [f], [])
        if not ok:
            problems.append(why)
    pend = set(pending)
    for b in backends:
        ok, why = haproxy_verdict(rows, [], [b])
        if not ok:
            (notes if b in pend else problems).append(why + (" (its servers are deployed later)" if b in pend else ""))
    return problems, notes


def frontend_sessions(rows: Mapping[tuple[str, str], Mapping[str, str]], frontends: Iterable[str]) -> dict[str, int]:
    """Frontend → its current sessions (``scur``) in one HAProxy process; 0 for a frontend it
    does not list. ``rows`` is :func:`parse_show_stat`."""
    return {f: int(rows.get((f, "FRONTEND"), {}).get("scur") or 0) for f in frontends}
