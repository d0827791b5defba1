"""What a node does with its pillar slice, without Salt: render, check, apply, drain, status, VIPs.

``_modules/anycastlb.py`` and ``_states/anycastlb.py`` are thin adapters that hand
``__pillar__["anycastlb"]`` (a node model plus its secret values, see
:mod:`anycastlb.pillar`) to these functions.

One module-level hook exists for tests and special hosts: :data:`control_factory`
builds the :class:`~anycastlb.service.ServiceControl` (a test puts a recorder there).
The VIPs on ``lo`` are converged by the service control with the ``healthd`` step
(:func:`anycastlb.service.sync_vips`).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from typing import Any, Callable, Mapping, cast

from .apply import ApplyResult, apply_daemon, stage_and_check
from .model import NodeModel
from .poll import poll_until
from .render import RenderedFile, RenderError, daemon, daemons
from .service import ServiceControl

#: Builds the service controller from the service mode (``None``: detect). Tests replace it.
control_factory: Callable[..., Any] = ServiceControl

HEALTHD_CONFIG = "/etc/anycastlb/healthd.json"
HEALTHD_PIDFILE = "/run/anycastlb/healthd.pid"
NO_SECRETS: dict[str, Any] = {"certificates": {}, "bgp_passwords": {}}


class NodeError(RuntimeError):
    """This minion cannot act: no model in its pillar, an unknown daemon, ..."""


# ----------------------------------------------------------------- pillar → model


def node_of(pillar: Mapping[str, Any] | None) -> tuple[NodeModel, dict[str, Any]]:
    """(model, secret values) from the ``anycastlb`` pillar; refuses a minion the catalog does not name."""
    data = dict(pillar or {})
    if not data.get("node"):
        raise NodeError("this minion has no anycastlb pillar: the catalog does not name it "
                        "(or the ext_pillar is not configured, or pillar failed: see pillar.items)")
    secrets = data.pop("secrets", None)
    if not isinstance(secrets, dict) or "certificates" not in secrets:
        secrets = NO_SECRETS  # a model straight from `anycastlb show`: names only, no values
    data["secrets"] = {k: sorted(secrets.get(k) or ()) for k in ("certificates", "bgp_passwords")}  # names again
    # The pillar's anycastlb key is the node's compiled model (anycastlb.model.NodeModel) by contract.
    return cast(NodeModel, data), secrets


def control(pillar: Mapping[str, Any] | None, root: str = "/") -> Any:
    """The service controller for this node (pillar ``service_mode``, else the environment, else detection).

    A ``root`` other than ``/`` places the daemons' pidfiles and sockets under it too,
    so a staged tree never reloads the host's own daemons.
    """
    mode = (pillar or {}).get("service_mode")
    return control_factory(mode) if root in ("", "/") else control_factory(mode, root=root)


def wanted(model: NodeModel) -> list[str]:
    """The daemons this node runs, in apply order."""
    return [d.name for d in daemons() if d.wanted(model)]


def spec_for(name: str, model: NodeModel) -> Any:
    try:
        spec = daemon(name)
    except KeyError as exc:
        raise NodeError(str(exc.args[0])) from None
    if not spec.wanted(model):
        raise NodeError(f"{name} does not run on {model['node']} (it runs: {', '.join(wanted(model)) or 'nothing'})")
    return spec


def _selected(model: NodeModel, name: str | None) -> list[Any]:
    return [spec_for(name, model)] if name else [daemon(n) for n in wanted(model)]


# ----------------------------------------------------------------- render / check / apply


def _shown(f: RenderedFile, show_secrets: bool) -> str:
    if f.secret and not show_secrets:
        return f"(secret file, mode {f.mode:04o}, {len(f.content)} characters: not shown)"
    return f.content


def render(model: NodeModel, secrets: dict[str, Any], name: str | None = None,
           show_secrets: bool = False) -> dict[str, dict[str, str]]:
    """``{daemon: {path: text}}``: what would be written (secret files hidden unless asked)."""
    return {s.name: {f.path: _shown(f, show_secrets) for f in s.render(model, secrets, "/")}
            for s in _selected(model, name)}


def check(model: NodeModel, secrets: dict[str, Any], name: str | None = None) -> dict[str, dict[str, Any]]:
    """Run each daemon's own checker on freshly rendered files; nothing live is touched."""
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aclb-check-") as empty_root:
        for spec in _selected(model, name):
            root = "/" if spec.tree else empty_root  # whole-tree daemons check against the packaged tree
            try:
                ok, output = stage_and_check(spec, model, secrets, root)
            except RenderError as exc:
                ok, output = False, f"render failed: {exc}"
            out[spec.name] = {"ok": ok, "output": output}
    return out


def apply(name: str, model: NodeModel, secrets: dict[str, Any], ctl: Any = None, root: str = "/",
          test: bool = False) -> ApplyResult:
    """Render → stage → check → swap → reload one daemon; every failure becomes a ``False`` result."""
    try:
        spec_for(name, model)
        return apply_daemon(name, model, secrets, root=root, test=test, reload=ctl is not None, control=ctl)
    except (NodeError, RenderError) as exc:
        return ApplyResult(name, False, f"{name}: {exc}")
    except Exception as exc:  # a service manager or I/O failure: say it, do not crash the run
        return ApplyResult(name, False, f"{name}: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------- the model the last state run was given

#: The node model of this node's last state run (its pillar's): the first line its
#: :func:`~anycastlb.model.model_hash`, then the model as JSON. The rolling deploy's verify
#: judges the node against it when it is the model the plan gave the node, instead of
#: compiling the pillar once more (1-2 s at 1,000 services, per node).
APPLIED_MODEL = "/var/lib/anycastlb/applied-model.json"


def record_model(model: NodeModel, test: bool = False, path: str | None = None) -> dict[str, Any]:
    """Keep ``model`` as the one this node's state run was given (in ``path``, default
    :data:`APPLIED_MODEL`); a state-shaped result (no change when the record already holds it;
    ``test``: what would change)."""
    from .model import model_hash

    path = path or APPLIED_MODEL
    name = "the model this state run was given"
    new = model_hash(model)
    try:
        with open(path, encoding="utf-8") as fh:
            old = fh.readline().strip()
    except OSError:
        old = ""
    if old == new:
        return {"name": name, "result": True, "changes": {}, "comment": f"model {new} is on record ({path})"}
    changes = {"model": {"old": old or None, "new": new}}
    if test:
        return {"name": name, "result": None, "changes": changes, "comment": f"model {new} would be recorded in {path}"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".applied-model.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(new + "\n")
        json.dump(model, fh, separators=(",", ":"), default=str)
    os.replace(tmp, path)
    return {"name": name, "result": True, "changes": changes, "comment": f"model {new} recorded in {path}"}


def recorded_model(expect: str, path: str | None = None) -> NodeModel | None:
    """The model of this node's last state run if its hash is ``expect`` (checked on the model
    itself, not only the record's first line), else None."""
    from .model import model_hash

    path = path or APPLIED_MODEL
    try:
        with open(path, encoding="utf-8") as fh:
            if not expect or fh.readline().strip() != expect:
                return None
            model = json.load(fh)
    except (OSError, ValueError):
        return None
    return cast(NodeModel, model) if isinstance(model, dict) and model_hash(model) == expect else None


# ----------------------------------------------------------------- kernel settings


def sysctl(name: str, value: str, test: bool = False, proc: str = "/proc/sys",
           load: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The kernel setting ``name`` (``net.netfilter.nf_conntrack_tcp_be_liberal``) is ``value``, read and
    written under ``proc`` (no subprocess when it already is). A ``net.netfilter.nf_conntrack_*`` key
    that is missing loads the ``nf_conntrack`` module first (``load``, default ``modprobe``). A
    state-shaped result; ``test``: what would change, nothing written."""
    path = os.path.join(proc, *name.split("."))
    want = str(value).strip()
    if not os.path.exists(path) and name.startswith("net.netfilter.nf_conntrack_") and not test:
        import subprocess

        (load or (lambda mod: subprocess.run(["modprobe", mod], capture_output=True, check=False)))("nf_conntrack")
    try:
        with open(path, encoding="ascii") as fh:
            now: str | None = fh.read().strip()
    except OSError:
        now = None
    if now is None:
        return {"result": False, "changes": {}, "comment": f"{name}: no such kernel setting ({path} cannot be read)"}
    if now == want:
        return {"result": True, "changes": {}, "comment": f"{name} is {want}"}
    if test:
        return {"result": None, "changes": {name: {"old": now, "new": want}}, "comment": f"{name} would be set to {want}"}
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(want + "\n")
    except OSError as exc:
        return {"result": False, "changes": {}, "comment": f"{name}: cannot set it to {want}: {exc}"}
    return {"result": True, "changes": {name: {"old": now, "new": want}}, "comment": f"{name} set to {want}"}


# ----------------------------------------------------------------- retire: what a node stops running

#: The order daemons are retired in: the health agent first (stopping it withdraws every
#: announcement), then what served, the firewall last.
RETIRE_ORDER = ("healthd", "haproxy", "bird", "apache2", "icinga2", "nftables")


def unwanted(model: NodeModel | None) -> list[str]:
    """The daemons anycastlb manages that this node does not run (every one when the catalog no
    longer names the node: ``model`` None), in :data:`RETIRE_ORDER`."""
    keep = set(wanted(model)) if model is not None else set()
    names = [d.name for d in daemons() if d.name not in keep]
    return sorted(names, key=lambda n: RETIRE_ORDER.index(n) if n in RETIRE_ORDER else len(RETIRE_ORDER))


#: Where a retired daemon's files are removed: configs and state (and the health agent's runtime
#: files). Programs (the Icinga plugins under /usr/local) stay, as the daemons' packages do.
RETIRE_UNDER = ("/etc/", "/var/", "/run/anycastlb/")


def leftovers(spec: Any, root: str = "/") -> list[str]:
    """The files of ``spec`` that anycastlb wrote and that are still there: its owned files and those of
    its ``leaves`` that are ours (an ``anycastlb`` path, or our header in the text) under
    :data:`RETIRE_UNDER`, never the site's."""
    from .apply import _read
    from .render import HEADER, owned_files, under

    def ours(target: str) -> bool:
        path = "/" + os.path.relpath(target, root or "/")  # its production path: the root's name says nothing
        if not path.startswith(RETIRE_UNDER):
            return False
        return "anycastlb" in path or HEADER in (_read(target) or "")

    out = [p for p in owned_files(spec, root) if ours(p)]
    for path in spec.leaves:
        target = under(root, path)
        if os.path.isfile(target) and target not in out and ours(target):
            out.append(target)
    return sorted(out)


def _announced_vips(root: str = "/") -> list[str]:
    """The host prefixes the health agent's config (still) lists: what it put on ``lo``."""
    from .render import under
    from .units import vip_addresses

    try:
        return vip_addresses(under(root, HEALTHD_CONFIG))
    except Exception:  # no config, or one healthd cannot read: nothing known to remove
        return []


def retire(model: NodeModel | None, ctl: Any, root: str = "/", test: bool = False) -> dict[str, Any]:
    """Take away what this node no longer runs (:func:`unwanted`): for each daemon that left a trace
    (files of ours, or for the firewall our loaded table), stop it (the health agent first: it
    withdraws), disable its unit, remove its files; the health agent's VIPs leave ``lo``.

    A state-shaped result; ``test``: what would go, nothing is done. A daemon anycastlb never
    configured on this node (no file of ours) is left alone, running or not. With no model
    (decommission) the model record (:data:`APPLIED_MODEL`) goes too.
    """
    from .apply import remove_file
    from .service import ServiceError, drop_vips, services

    changes: dict[str, Any] = {}
    errors: list[str] = []
    record = APPLIED_MODEL
    if model is None and os.path.exists(record):   # decommissioned: no model of ours is applied here any more
        try:
            if not test:
                os.remove(record)
            changes["model record"] = {"would remove" if test else "removed": [record]}
        except OSError as exc:
            errors.append(f"model record: {exc}")
    for name in unwanted(model):
        spec = daemon(name)
        files = leftovers(spec, root)
        svc = services().get(name)
        svc_oneshot = bool(svc and svc.oneshot)
        try:
            running = bool(ctl.running(name)) if ctl is not None else False
        except Exception:  # a controller that cannot tell: the files decide
            running = False
        if not files and not (svc_oneshot and running):
            continue
        vips = _announced_vips(root) if name == "healthd" else []
        done: dict[str, Any] = {}
        if test:
            done = {"would stop": running, "would remove": files}
            if vips:
                done["would remove VIPs from lo"] = vips
            changes[name] = done
            continue
        try:
            if running and ctl is not None:
                done["stopped"] = ctl.unload(name) if svc_oneshot else ctl.stop(name)
            if ctl is not None and hasattr(ctl, "disable"):
                disabled = ctl.disable(name)
                if disabled:
                    done["disabled"] = disabled
            if vips and ctl is not None:
                done["vips removed from lo"] = drop_vips(vips, run=ctl._run, prefix=ctl.prefix)
            for path in files:
                remove_file(path, spec, root)
            done["removed"] = files
        except (ServiceError, OSError) as exc:
            errors.append(f"{name}: {exc}")
        if done:
            changes[name] = done
    if not test and any("anycastlb-healthd.service" in p for c in changes.values() for p in c.get("removed", [])) \
            and getattr(ctl, "mode", "") == "systemd":
        ctl._run(["systemctl", "daemon-reload"])
    node = model["node"] if model is not None else "this node"
    if errors:
        return {"result": False, "changes": changes, "comment": f"{node}: retiring failed: " + "; ".join(errors)}
    if not changes:
        return {"result": True, "changes": {}, "comment": f"{node}: nothing to retire (runs {', '.join(wanted(model)) if model is not None else 'nothing of anycastlb'})"}
    verb = "would retire" if test else "retired"
    return {"result": None if test else True, "changes": changes,
            "comment": f"{node}: {verb} {', '.join(changes)} (no longer run here)"}


# ----------------------------------------------------------------- runtime: drain, status


def _healthd_paths(config: str = HEALTHD_CONFIG) -> tuple[str, str]:
    """(drain file, state file) from healthd.json, or healthd's defaults."""
    from . import healthd
    try:
        cfg = healthd.load_config(config)
        return cfg.drain_file, cfg.state_file
    except healthd.ConfigError:
        return healthd.DEFAULT_DRAIN_FILE, healthd.DEFAULT_STATE_FILE


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _is_healthd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"healthd" in fh.read()
    except OSError:
        return False


def healthd_pid(pidfile: str = HEALTHD_PIDFILE, state_file: str | None = None) -> int | None:
    """The running health agent's pid (its pidfile, else the pid its state file names)."""
    candidates: list[Any] = []
    try:
        with open(pidfile, encoding="ascii") as fh:
            candidates.append(int(fh.read().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    if state_file:
        candidates.append((_read_json(state_file) or {}).get("pid"))
    for pid in candidates:
        if isinstance(pid, int) and _is_healthd(pid):
            return pid
    return None


def set_drain(drained: bool, timeout: float = 10.0, config: str = HEALTHD_CONFIG,
              pidfile: str = HEALTHD_PIDFILE, reason: str = "") -> dict[str, Any]:
    """Create (or remove) the drain file, wake the health agent, wait until its state file agrees.

    Draining withdraws every announcement of the node; BGP sessions stay up and
    HAProxy keeps its connections. ``result`` is ``False`` when the agent is not
    running or did not confirm in time (the drain file is in place either way).
    ``reason`` goes into the drain file (an orchestration writes ``orchestrate``, so a
    later run knows it may undrain the node; see :func:`drain_reason`).
    """
    drain_file, state_file = _healthd_paths(config)
    if drained:
        os.makedirs(os.path.dirname(drain_file), exist_ok=True)
        with open(drain_file, "w", encoding="utf-8") as fh:
            fh.write(f"drained at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
                     + (f"reason: {reason}\n" if reason else ""))
    else:
        try:
            os.remove(drain_file)
        except FileNotFoundError:
            pass
    word = "drained" if drained else "undrained"
    ret: dict[str, Any] = {"result": False, "drained": drained, "drain_file": drain_file, "healthd_pid": None}
    pid = healthd_pid(pidfile, state_file)
    if pid is None:
        ret["comment"] = (f"drain file {'written' if drained else 'removed'}, but anycastlb-healthd is not running: "
                          f"the node is {word} when it starts")
        return ret
    ret["healthd_pid"] = pid
    def confirmed(doc: dict[str, Any] | None) -> bool:
        if not doc or doc.get("pid") != pid or doc.get("drained") is not drained:
            return False
        return not drained or not any(s.get("announced") for s in (doc.get("prefixes") or {}).values())

    start = time.monotonic()
    os.kill(pid, signal.SIGUSR1)
    polled = poll_until(lambda: _read_json(state_file), confirmed, timeout, 0.05, since=start)
    doc = polled.value
    if not polled.done:
        ret["comment"] = f"anycastlb-healthd (pid {pid}) did not report {word} within {timeout:g} s"
        ret["state"] = doc
        return ret
    assert doc is not None
    ret.update(result=True, waited_ms=polled.waited_ms,
               prefixes={p: s.get("announced") for p, s in sorted((doc.get("prefixes") or {}).items())},
               comment=f"{word}: anycastlb-healthd (pid {pid}) confirmed"
                       + ("; every announcement is withdrawn, BGP sessions stay up" if drained else ""))
    return ret


def status(model: NodeModel, ctl: Any, config: str = HEALTHD_CONFIG,
           pidfile: str = HEALTHD_PIDFILE, brief: bool = False) -> dict[str, Any]:
    """The health agent's view (drained, what is announced and why) and whether each daemon runs;
    ``brief``: of the prefixes only those announced, as ``{prefix: {"announced": True}}``."""
    drain_file, state_file = _healthd_paths(config)
    pid = healthd_pid(pidfile, state_file)
    doc = _read_json(state_file) or {}
    if brief:
        doc["prefixes"] = {p: {"announced": True} for p, st in (doc.get("prefixes") or {}).items()
                           if isinstance(st, dict) and st.get("announced")}
    running: dict[str, Any] = {}
    for name in wanted(model):
        try:
            running[name] = bool(ctl.running(name))
        except Exception as exc:  # the controller cannot tell: say so rather than guess
            running[name] = f"unknown ({type(exc).__name__}: {exc})"
    return {
        "node": model["node"], "catalog_state": model["state"],
        "drain_file": os.path.exists(drain_file), "drain_reason": drain_reason(drain_file),
        "healthd": {"running": pid is not None, "pid": pid, "drained": doc.get("drained"),
                    "state_file": state_file, "fresh": pid is not None and doc.get("pid") == pid,
                    "prefixes": doc.get("prefixes", {})},
        "daemons": running,
    }


def drain_reason(drain_file: str) -> str | None:
    """The ``reason:`` line of the drain file (``""`` when it has none), None when there is no drain file."""
    try:
        with open(drain_file, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("reason:"):
            return line.split(":", 1)[1].strip()
    return ""


# ----------------------------------------------------------------- BIRD: routes and sessions (route reflectors)

BIRD_SOCKET = "/run/bird/bird.ctl"


def birdc(*command: str, socket: str = BIRD_SOCKET, timeout: float = 10.0) -> str:
    """``birdc -s SOCKET COMMAND``'s output; raises NodeError when BIRD does not answer."""
    import subprocess

    try:
        r = subprocess.run(["birdc", "-s", socket, *command], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeError(f"birdc {' '.join(command)}: {exc}") from None
    if r.returncode != 0 or "Unable to connect" in r.stdout:
        raise NodeError(f"birdc {' '.join(command)} failed: {(r.stdout + r.stderr).strip()[-500:]}")
    return r.stdout


def routes(via: list[str] | None = None, socket: str = BIRD_SOCKET) -> dict[str, list[str]]:
    """Prefix → next hops of every path BIRD carries (only prefixes with a path via one of ``via``)."""
    from .answers.bird import first_hops, parse_routes

    return first_hops(parse_routes(birdc("show", "route", "all", socket=socket)), via)


def wait_routes(via: list[str], present: list[str] | None = None, timeout: float = 30.0,
                socket: str = BIRD_SOCKET, interval: float = 0.05) -> dict[str, Any]:
    """Poll BIRD until no path goes via ``via`` (``present`` None) or every prefix of ``present`` has one.

    ``result`` False (with what is carried) when that did not happen within ``timeout``.
    """
    from .answers.bird import carried_via, parse_routes
    want = set(present or ())
    polled = poll_until(lambda: carried_via(parse_routes(birdc("show", "route", "all", socket=socket)), via),
                        lambda c: want <= set(c) if present is not None else not c, timeout, interval)
    carried, done, waited = polled.value, polled.done, polled.waited_ms
    what = f"every path of {', '.join(sorted(want))}" if present is not None else "no path"
    return {"result": done, "carried": carried, "waited_ms": waited,
            "comment": (f"carries {what} via {', '.join(via)} after {waited} ms" if done else
                        f"still not {what} via {', '.join(via)} after {timeout:g} s: carries {carried}")}


def sessions(socket: str = BIRD_SOCKET) -> dict[str, dict[str, str]]:
    """BGP protocol → ``{state, neighbor}``: ``Established`` or what it is instead."""
    from .answers.bird import bgp_sessions, parse_protocols

    return bgp_sessions(parse_protocols(birdc("show", "protocols", "all", socket=socket)))


# ----------------------------------------------------------------- verify (after an apply)


def _verify_once(model: NodeModel, ctl: Any, pending: list[str]) -> tuple[list[str], list[str]]:
    from .answers.haproxy import STAT_COMMAND, parse_show_stat, verify_haproxy
    from .render.haproxy import ADMIN_SOCKET
    from .service import unix_query

    problems: list[str] = []
    notes: list[str] = []
    for name in wanted(model):
        try:
            if not ctl.running(name):
                problems.append(f"{name} is not running")
        except Exception as exc:  # the controller cannot tell
            problems.append(f"{name}: cannot tell whether it runs ({type(exc).__name__}: {exc})")
    if problems:
        return problems, notes
    hap = model["haproxy"]
    if hap:
        try:
            rows = parse_show_stat(unix_query(ADMIN_SOCKET, STAT_COMMAND.strip()))
        except (OSError, ValueError) as exc:
            problems.append(f"haproxy stats socket: {exc}")
        else:
            p, n = verify_haproxy(rows, [f["name"] for f in hap["frontends"]],
                                  [b["name"] for b in hap["backends"]], pending)
            problems += p
            notes += n
    if model.get("bgp"):
        try:
            bad = {n: s["state"] for n, s in sessions().items() if s["state"] != "Established"}
        except NodeError as exc:
            problems.append(str(exc))
        else:
            problems += [f"BGP session {n} is {st}" for n, st in sorted(bad.items())]
    apache = model["apache"]
    for vh in apache["vhosts"] if apache else []:
        if vh.get("health_path"):
            problems += _http_ok(model["address"], vh["port"], vh["server_name"], vh["health_path"])
    return problems, notes


#: One HAProxy process's frontends (``show stat`` with type mask 1).
FRONTEND_STAT = "show stat -1 1 -1"


def haproxy_master_socket() -> str | None:
    """The HAProxy master CLI of this host (systemd's or the direct mode's path), None if there is none."""
    from .paths import MODES

    for path in dict.fromkeys(m.haproxy_master_socket for m in MODES.values()):
        if os.path.exists(path):
            return path
    return None


def process_sessions(model: NodeModel) -> list[dict[str, Any]]:
    """Per HAProxy process, its frontends' current sessions: ``{"pid", "old", "frontends"}``.

    A reload leaves the old workers holding their connections until they end (or
    ``hard-stop-after``); the stats socket reaches only the current worker, so the master
    CLI is asked: ``show proc``, then ``@!<pid> show stat`` for every worker, old ones
    included. An old worker that exited in between is left out (the master no longer knows it, or it
    answered nothing and is no longer listed). Without a master CLI
    (HAProxy run without ``-S``), the stats socket: the current worker only (pid 0)."""
    from .answers.haproxy import frontend_sessions, parse_show_stat
    from .render.haproxy import ADMIN_SOCKET
    from .service import parse_show_proc, unix_query

    hap = model["haproxy"]
    if not hap:
        return []
    names = [f["name"] for f in hap["frontends"]]
    master = haproxy_master_socket()
    try:
        if master is None:
            rows = parse_show_stat(unix_query(ADMIN_SOCKET, FRONTEND_STAT), ("scur",))
            return [{"pid": 0, "old": False, "frontends": frontend_sessions(rows, names)}]
        proc = parse_show_proc(unix_query(master, "show proc"))
        out: list[dict[str, Any]] = []
        for pid, old in [(w, False) for w, _ in proc.workers] + [(w, True) for w in proc.old_workers]:
            text = unix_query(master, f"@!{pid} {FRONTEND_STAT}")
            if old and text.startswith("Can't find the target PID"):
                continue
            if old and not text.strip() and pid not in parse_show_proc(unix_query(master, "show proc")).old_workers:
                continue   # it exited while the master passed the command on (its last session closed)
            out.append({"pid": pid, "old": old,
                        "frontends": frontend_sessions(parse_show_stat(text, ("scur",)), names)})
    except (OSError, ValueError) as exc:
        raise NodeError(f"haproxy {'master CLI' if master else 'stats socket'}: {exc}") from None
    return out


def _by_frontend(procs: list[dict[str, Any]], old_only: bool = False) -> dict[str, int]:
    """Frontend → sessions summed over the processes of :func:`process_sessions` (old workers only)."""
    out: dict[str, int] = {}
    for p in procs:
        for name, n in p["frontends"].items():
            if p["old"] or not old_only:
                out[name] = out.get(name, 0) + n
    return out


def wait_sessions(model: NodeModel, deadline: float | None = None, every: float = 0.2) -> dict[str, Any]:
    """Graceful drain's wait: until the node's frontends hold no session in any HAProxy process
    (old workers of a reload included), or ``deadline`` seconds pass (default: the catalog's
    ``drain_deadline``). ``open`` is what was left, ``old_workers`` the part old workers held."""
    hap = model["haproxy"]
    if not hap:
        return {"result": True, "open": 0, "frontends": {}, "waited_ms": 0, "comment": "no HAProxy on this node"}
    limit = hap["drain_deadline_ms"] / 1000 if deadline is None else float(deadline)
    t0 = time.monotonic()
    procs = process_sessions(model)
    while sum(_by_frontend(procs).values()) and time.monotonic() - t0 < limit:
        time.sleep(every)
        procs = process_sessions(model)
    now = _by_frontend(procs)
    left, old = sum(now.values()), sum(_by_frontend(procs, old_only=True).values())
    ms = round((time.monotonic() - t0) * 1000)
    busy = {k: v for k, v in now.items() if v}
    return {"result": left == 0, "open": left, "old_workers": old, "frontends": busy, "waited_ms": ms,
            "deadline_s": limit, "processes": len(procs),
            "comment": (f"no session left after {ms} ms" if not left else
                        f"{left} session(s) still open at the {limit:g} s deadline: "
                        + ", ".join(f"{k} {v}" for k, v in sorted(busy.items()))
                        + (f" ({old} in old HAProxy workers of a reload)" if old else ""))}


def _http_ok(address: str, port: int, host: str, path: str) -> list[str]:
    import http.client

    conn = http.client.HTTPConnection(address, port, timeout=2)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return [f"apache2 {host}{path} on {address}:{port}: {type(exc).__name__}: {exc}"]
    finally:
        conn.close()
    return [] if status == 200 else [f"apache2 {host}{path} on {address}:{port} answers {status}"]


def verify(model: NodeModel, ctl: Any, pending: list[str] | None = None, timeout: float = 20.0,
           interval: float = 0.25) -> dict[str, Any]:
    """After an apply: every daemon runs, HAProxy's frontends are OPEN and backends UP, every BGP
    session is Established, every apache2 vhost answers its health path — polled until true or
    ``timeout``. Backends in ``pending`` may be down (a note, not a failure).
    """
    polled = poll_until(lambda: _verify_once(model, ctl, list(pending or ())), lambda pn: not pn[0], timeout, interval)
    (problems, notes), waited = polled.value, polled.waited_ms
    checked = ", ".join(wanted(model)) or "no daemons"
    return {"result": not problems, "node": model["node"], "problems": problems, "notes": notes,
            "waited_ms": waited,
            "comment": (f"{model['node']}: verified ({checked}) after {waited} ms" if not problems else
                        f"{model['node']}: not healthy after {timeout:g} s: " + "; ".join(problems))}
