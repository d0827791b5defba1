"""The impact of a catalog change: which services and which nodes change, and how."""

from __future__ import annotations

from typing import Any, Mapping

from .compiler import Fleet


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _dict_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human lines for what changed between two flat-ish mappings."""
    lines: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if isinstance(a, list) and isinstance(b, list) and all(not isinstance(x, (dict, list)) for x in a + b):
            added = [x for x in b if x not in a]
            removed = [x for x in a if x not in b]
            parts = ([f"+{_fmt(added)}"] if added else []) + ([f"-{_fmt(removed)}"] if removed else [])
            lines.append(f"{name}: {' '.join(parts) if parts else 'reordered'}")
        elif isinstance(a, dict) and isinstance(b, dict) and key == "backends":
            for be in sorted(set(a) | set(b)):
                if be not in a:
                    lines.append(f"backend {be} added ({_fmt(b[be])})")
                elif be not in b:
                    lines.append(f"backend {be} removed")
                elif a[be] != b[be]:
                    ch = [f"{k} {a[be].get(k)} -> {b[be].get(k)}" for k in sorted(set(a[be]) | set(b[be]))
                          if a[be].get(k) != b[be].get(k)]
                    lines.append(f"backend {be}: {', '.join(ch)}")
        elif isinstance(a, dict) and isinstance(b, dict):
            lines.extend(_dict_changes(a, b, f"{name}."))
        else:
            lines.append(f"{name}: {_fmt(a)} -> {_fmt(b)}")
    return lines


def _node_sections(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def diff_fleets(old: Fleet, new: Fleet) -> dict[str, Any]:
    """A structured impact report: services added/removed/changed, nodes changed per section."""
    services: dict[str, Any] = {"added": [], "removed": [], "changed": {}}
    for s in sorted(set(old.services) | set(new.services)):
        if s not in old.services:
            services["added"].append(s)
        elif s not in new.services:
            services["removed"].append(s)
        elif old.services[s] != new.services[s]:
            # "requests" is derived (from tls, route, apache and check): those keys show the change
            was, now = ({k: v for k, v in x.services[s].items() if k != "requests"} for x in (old, new))
            services["changed"][s] = _dict_changes(was, now)
    nodes: dict[str, Any] = {"added": [], "removed": [], "changed": {}}
    for n in sorted(set(old.nodes) | set(new.nodes)):
        if n not in old.nodes:
            nodes["added"].append(n)
        elif n not in new.nodes:
            nodes["removed"].append(n)
        else:
            a, b = old.nodes[n], new.nodes[n]
            if a != b:
                detail = []
                if a["state"] != b["state"]:
                    detail.append(f"state {a['state']} -> {b['state']}")
                if a["roles"] != b["roles"]:
                    detail.extend(_dict_changes({"roles": a["roles"]}, {"roles": b["roles"]}))
                bgp_a, bgp_b = a["bgp"], b["bgp"]
                ann_a = bgp_a["announce"] if bgp_a else []
                ann_b = bgp_b["announce"] if bgp_b else []
                if ann_a != ann_b:
                    detail.extend(_dict_changes({"announces": ann_a}, {"announces": ann_b}))
                nodes["changed"][n] = {"sections": _node_sections(a, b), "detail": detail}
    return {"services": services, "nodes": nodes, "raw": _raw_changes(old, new)}


def _raw(fleet: Fleet, sname: str) -> dict[str, list[str]]:
    h = (fleet.services.get(sname) or {}).get("haproxy") or {}
    raw = h.get("raw") or {}
    return {"frontend": list(raw.get("frontend") or []), "backend": list(raw.get("backend") or [])}


def _raw_changes(old: Fleet, new: Fleet) -> dict[str, dict[str, list[str]]]:
    """Raw HAProxy directives added or removed, per service and section (lint cannot judge them)."""
    out: dict[str, dict[str, list[str]]] = {}
    for sname in sorted(set(old.services) | set(new.services)):
        a, b = _raw(old, sname), _raw(new, sname)
        lines = {}
        for section in ("frontend", "backend"):
            added = [d for d in b[section] if d not in a[section]]
            removed = [d for d in a[section] if d not in b[section]]
            lines.update({f"{section} +": added} if added else {})
            lines.update({f"{section} -": removed} if removed else {})
        if lines:
            out[sname] = lines
    return out


def format_diff(report: dict[str, Any]) -> str:
    """The report as text for a pull-request comment."""
    out: list[str] = []
    s, n = report["services"], report["nodes"]
    if not (s["added"] or s["removed"] or s["changed"] or n["added"] or n["removed"] or n["changed"]):
        return "no change: every node's configuration stays as it is\n"
    raw = report.get("raw") or {}
    if raw:
        out.append("!! RAW HAProxy directives change: lint does not understand them, only haproxy -c checks them.")
        out.append("!! Review every line:")
        for name, changes in raw.items():
            for what, lines in changes.items():
                section, sign = what.split()
                out.extend(f"!!   {sign} {name} {section}: {line}" for line in lines)
    out.append("Services:")
    for name in s["added"]:
        out.append(f"  + {name} (new)")
    for name in s["removed"]:
        out.append(f"  - {name} (removed)")
    for name, lines in s["changed"].items():
        out.append(f"  ~ {name}")
        out.extend(f"      {line}" for line in lines)
    if not (s["added"] or s["removed"] or s["changed"]):
        out.append("  (none)")
    out.append("Nodes:")
    for name in n["added"]:
        out.append(f"  + {name} (new)")
    for name in n["removed"]:
        out.append(f"  - {name} (removed)")
    for name, info in n["changed"].items():
        out.append(f"  ~ {name}: {', '.join(info['sections'])}")
        out.extend(f"      {line}" for line in info["detail"])
    if not (n["added"] or n["removed"] or n["changed"]):
        out.append("  (none)")
    total = len(n["added"]) + len(n["removed"]) + len(n["changed"])
    out.append(f"{total} node(s) change, {len(s['added']) + len(s['removed']) + len(s['changed'])} service(s) change")
    return "\n".join(out) + "\n"


def _fence(lines: list[str]) -> tuple[str, str]:
    """A code fence longer than any backtick run in ``lines`` (catalog text cannot close it)."""
    longest = max((len(run) for line in lines for run in _runs(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return fence, fence


def _runs(line: str) -> list[str]:
    """The runs of backticks in ``line``."""
    out: list[str] = []
    cur = ""
    for ch in line:
        if ch == "`":
            cur += ch
        elif cur:
            out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


def drains(old: Fleet, new: Fleet, report: Mapping[str, Any]) -> list[dict[str, str]]:
    """What the rolling deploy does about draining each changed or new node.

    Uses the deploy's own plan (:func:`anycastlb.orchestrate.plan.plan`, ``drain="auto"``,
    against ``old`` as the deployed catalog); runtime drains are not known here.
    Each entry: ``node``, ``what`` (``drained``, ``stays drained``, ``in place``) and ``why``.
    """
    from .orchestrate.plan import plan

    touched = set(report["nodes"]["added"]) | set(report["nodes"]["changed"])
    out: list[dict[str, str]] = []
    for step in plan(new, deployed=old, drain="auto"):
        if step.node not in touched or step.phase not in ("clusters", "anycast"):
            continue
        if "drain" in step.actions and "undrain" in step.actions:
            what = "drained"
        elif "drain" in step.actions or new.nodes[step.node].get("state", "active") != "active":
            what = "stays drained"   # drained first, or drained in the catalog before and after
        else:
            what = "in place"
        out.append({"node": step.node, "group": step.group, "what": what,
                    "why": step.note.removeprefix("drained: ")})
    return out


def format_markdown(report: Mapping[str, Any], drained: list[dict[str, str]]) -> str:
    """The report as a Markdown merge-request comment: summary, drains, services, nodes, raw lines."""
    s, n = report["services"], report["nodes"]
    if not (s["added"] or s["removed"] or s["changed"] or n["added"] or n["removed"] or n["changed"]):
        return "### anycastlb diff\n\nNo change: every node's configuration stays as it is.\n"
    nodes = len(n["added"]) + len(n["removed"]) + len(n["changed"])
    svcs = len(s["added"]) + len(s["removed"]) + len(s["changed"])
    out = ["### anycastlb diff", "",
           f"**{svcs} service(s) and {nodes} node(s) change; "
           f"{sum(d['what'] == 'drained' for d in drained)} node(s) will be drained during the deploy.**", ""]
    raw = report.get("raw") or {}
    if raw:
        lines = [f"{what.split()[1]} {name} {what.split()[0]}: {line}"
                 for name, changes in raw.items() for what, ls in changes.items() for line in ls]
        fo, fc = _fence(lines)
        out += ["> [!WARNING]", "> Raw HAProxy directives change: lint does not understand them, "
                "only `haproxy -c` checks them. Review every line:", "", fo + "diff", *lines, fc, ""]
    out += ["#### Drains", ""]
    if drained:
        out += ["| node | group | during the deploy | why |", "| --- | --- | --- | --- |"]
        labels = {"drained": "**drained**, then undrained", "stays drained": "applied drained, stays drained",
                  "in place": "applied in place, not drained"}
        out += [f"| {d['node']} | {d['group']} | {labels[d['what']]} | {_cell(d['why'])} |" for d in drained]
    else:
        out.append("No announcing node changes: nothing is drained.")
    out.append("")
    body = ([f"+ {x} (new)" for x in s["added"]] + [f"- {x} (removed)" for x in s["removed"]]
            + [f"~ {k}\n" + "\n".join(f"    {line}" for line in v) for k, v in s["changed"].items()])
    if body:
        fo, fc = _fence(body)
        out += ["#### Services", "", fo + "diff", *body, fc, ""]
    body = ([f"+ {x} (new)" for x in n["added"]] + [f"- {x} (removed)" for x in n["removed"]]
            + [f"~ {k}: {', '.join(v['sections'])}" + "".join(f"\n    {line}" for line in v["detail"])
               for k, v in n["changed"].items()])
    if body:
        fo, fc = _fence(body)
        out += ["#### Nodes", "", fo + "diff", *body, fc, ""]
    return "\n".join(out)


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
