"""Render → stage → check → swap → reload: the one path every config takes to a host.

A candidate that the daemon's own checker rejects never replaces a live file and
nothing reloads. An unchanged config reports no change and reloads nothing.
``test=True`` reports the diff and touches nothing. Used by the Salt state module
and by the CLI alike.
"""

from __future__ import annotations

import difflib
import grp
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

from .render import DaemonSpec, RenderedFile, confine, daemon, owned_files, under
from .secrets import MASK, mask


@dataclass
class ApplyResult:
    """The outcome of applying one daemon's config; shaped like a Salt state result."""

    name: str
    result: bool | None
    comment: str
    changes: dict[str, Any] = field(default_factory=dict)
    reloaded: bool = False

    def as_state(self) -> dict[str, Any]:
        """A Salt state return (``skip_watch`` when a failure must not trigger reloads)."""
        ret: dict[str, Any] = {"name": self.name, "result": self.result, "comment": self.comment,
                               "changes": self.changes if self.result is not False else {}}
        if self.result is False:
            ret["skip_watch"] = True
        return ret


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def _gid(group: str) -> int:
    """The gid of ``group`` ("" = root); an unknown group is an error naming it."""
    if not group:
        return 0
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(f"group {group!r} does not exist on this host (is its package installed?)") from None


def _same_owner(path: str, group: str) -> bool:
    try:
        return os.stat(path).st_gid == _gid(group)
    except (FileNotFoundError, OSError):
        return False


def plan(spec: DaemonSpec, model: Mapping[str, Any], secrets: dict[str, Any], root: str = "/"
         ) -> tuple[list[RenderedFile], list[str], dict[str, str]]:
    """What would change: (files to write, files to remove, unified diff per path)."""
    files = spec.render(model, secrets, root)
    rendered = {confine(root, f.path) for f in files}
    writes: list[RenderedFile] = []
    diffs: dict[str, str] = {}
    for f in files:
        target = confine(root, f.path)
        old = _read(target)
        if old == f.content and _mode(target) == f.mode and (not f.group or _same_owner(target, f.group)):
            continue
        writes.append(f)
        diffs[f.path] = _diff(spec, f, old, _mode(target), secrets)
    removes = [path for path in owned_files(spec, root) if path not in rendered]
    for path in removes:
        diffs[path] = "(removed: no longer rendered)"
    return writes, removes, diffs


def _diff(spec: DaemonSpec, f: RenderedFile, old: str | None, old_mode: int | None,
          secrets: dict[str, Any]) -> str:
    """The unified diff shown for one file; secret values never in it.

    A file that holds a secret now *or held one before* (removing a BGP password must
    not print the old one) is diffed only through its daemon's ``redact``, which masks
    the values; without one only a note is shown. Every known secret value is masked
    in any diff too.
    """
    was_secret = old_mode is not None and old_mode & 0o007 == 0
    new, before = f.content, old or ""
    note = ""
    if f.secret or was_secret:
        if spec.redact is None:
            return "(secret file changed: diff hidden)"
        new, before = spec.redact(new), spec.redact(before)
        note = f"# {f.path} holds a secret: its values are shown as {MASK}\n"
        if new == before:
            return note + "(only a secret value or the file's mode changed)"
    text = "".join(difflib.unified_diff(
        before.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{f.path} (live)" if old is not None else "/dev/null", tofile=f"{f.path} (new)"))
    return note + mask(text, secrets)


def stage_and_check(spec: DaemonSpec, model: Mapping[str, Any], secrets: dict[str, Any],
                    root: str = "/") -> tuple[bool, str]:
    """Render into a staging copy (with the daemon's whole tree) and run its checker there."""
    with tempfile.TemporaryDirectory(prefix="aclb-stage-") as staging:
        for tree in spec.tree:
            src = under(root, tree)
            if os.path.isdir(src):
                shutil.copytree(src, under(staging, tree), symlinks=True, dirs_exist_ok=True)
        for path in owned_files(spec, staging):
            os.remove(path)
        files = spec.render(model, secrets, staging)
        for f in files:
            write_file(confine(staging, f.path), f.content, f.mode, f.group)
        res = spec.check(staging, files)
        return res.ok, mask(f"{res.command}\n{res.output}".strip(), secrets)


def write_file(path: str, content: str, mode: int, group: str = "") -> None:
    """Write ``content`` to ``path`` atomically: a temp file in the same directory, fsynced,
    its mode (and ``group``, readable by it) set, then ``os.replace``; nothing is left on failure."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".aclb-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        if group:
            os.chown(tmp, 0 if os.geteuid() == 0 else -1, _gid(group))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_file(path: str, spec: DaemonSpec | None = None, root: str = "/") -> None:
    """Remove ``path``, then the directories this left empty below the fixed part of the ``spec.owned``
    pattern that matched it (``/var/www/anycastlb/**``: a removed service's docroot, never ``/var/www/anycastlb``)."""
    os.remove(path)
    bases = [under(root, _fixed(p)) for p in (spec.owned if spec else ())]
    parent = os.path.dirname(path)
    while any(parent.startswith(b.rstrip("/") + "/") for b in bases):
        try:
            os.rmdir(parent)
        except OSError:  # not empty
            return
        parent = os.path.dirname(parent)


def _fixed(pattern: str) -> str:
    """The directory part of a glob pattern before its first wildcard."""
    head = pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
    return head if head.endswith("/") else os.path.dirname(head)


def apply_daemon(name: str, model: Mapping[str, Any], secrets: dict[str, Any] | None = None, root: str = "/",
                 test: bool = False, reload: bool = True, control: Any = None) -> ApplyResult:
    """Apply one daemon's config on this host.

    ``control`` is a :class:`anycastlb.service.ServiceControl` (default: the one
    this host uses); it reloads (or starts) the daemon after a swap, and
    converges the host state that goes with the daemon (the VIPs on ``lo`` for
    ``healthd``). A reload the daemon refuses puts the previous files back (the
    running daemon kept them) and fails. Every secret value of ``secrets`` is
    masked in the result's comment and changes.
    """
    secrets = secrets or {"certificates": {}, "bgp_passwords": {}}
    res = _apply_daemon(name, model, secrets, root=root, test=test, reload=reload, control=control)
    res.comment, res.changes = mask(res.comment, secrets), mask(res.changes, secrets)
    return res


def _apply_daemon(name: str, model: Mapping[str, Any], secrets: dict[str, Any] | None = None, root: str = "/",
                 test: bool = False, reload: bool = True, control: Any = None) -> ApplyResult:
    """The work of :func:`apply_daemon` (its result is masked there)."""
    from .render import RenderError
    from .service import ServiceError

    spec = daemon(name)
    secrets = secrets or {"certificates": {}, "bgp_passwords": {}}
    try:
        writes, removes, diffs = plan(spec, model, secrets, root)
    except RenderError as exc:
        return ApplyResult(name, False, f"{name}: cannot render: {exc}; nothing was changed")
    host: dict[str, Any] = {}
    if control is not None and reload and hasattr(control, "converge"):
        try:
            host = control.converge(name, model, test=test) or {}
        except ServiceError as exc:
            return ApplyResult(name, False, f"{name}: {exc}")
    if not writes and not removes:
        if reload and not test and control is not None and not control.running(name):
            try:
                out = control.start(name)
            except ServiceError as exc:
                return ApplyResult(name, False, f"{name}: config unchanged; the daemon is not running and "
                                                f"could not be started: {exc}")
            return ApplyResult(name, True, f"{name}: config unchanged; daemon was not running: {out}",
                               {"started": True, **host}, reloaded=True)
        if host:
            return ApplyResult(name, None if test else True, f"{name}: config is in the desired state; "
                               f"host state {'would change' if test else 'changed'}", host)
        return ApplyResult(name, True, f"{name}: config is in the desired state")
    if test:
        return ApplyResult(name, None, f"{name}: would change {len(diffs)} file(s)", {"diff": diffs, **host})
    try:
        ok, output = stage_and_check(spec, model, secrets, root)
    except RenderError as exc:
        return ApplyResult(name, False, f"{name}: cannot render: {exc}; nothing was changed")
    if not ok:
        return ApplyResult(name, False, f"{name}: the checker refused the new config; the live config is "
                                        f"untouched and nothing was reloaded:\n{output}")
    hot = reload and control is not None and _hot_loadable(spec, writes, removes, root, control)
    if hot:
        from .certs import check_bundle
        for f in writes:
            problems = check_bundle(f.content)
            if problems:
                return ApplyResult(name, False, f"{name}: the new certificate {f.path} is refused "
                                                f"({'; '.join(problems)}); the live one is untouched")
    backup = {confine(root, f.path): (_read(confine(root, f.path)), _mode(confine(root, f.path)),
                                      _group(confine(root, f.path))) for f in writes}
    backup.update({path: (_read(path), _mode(path), _group(path)) for path in removes})
    for f in writes:
        write_file(confine(root, f.path), f.content, f.mode, f.group)
    for path in removes:
        remove_file(path, spec, root)
    changes: dict[str, Any] = {"diff": diffs, **host}
    swap_note = ""
    if reload and control is not None and hot:
        try:
            swapped = [control.set_ssl_cert(under(root, f.path), f.content) for f in writes]
        except ServiceError as exc:
            swap_note = f"runtime certificate swap failed ({exc}): reloaded instead; "
        else:
            workers = control.haproxy_workers()
            changes["hot_load"] = swapped
            return ApplyResult(name, True, f"{name}: {len(writes)} certificate(s) checked, written and swapped into "
                                           f"the running HAProxy through its runtime API, no reload (workers "
                                           f"{', '.join(map(str, workers))} kept): {'; '.join(swapped)}", changes)
    if reload and control is not None:
        try:
            out = swap_note + control.reload_or_start(name)
        except ServiceError as exc:
            _restore(backup)
            return ApplyResult(name, False, f"{name}: the daemon refused the new config; the previous files "
                                            f"are restored (the running daemon still uses them): {exc}")
        changes["reload"] = out
        return ApplyResult(name, True, f"{name}: {len(writes)} file(s) written, {len(removes)} removed; {out}",
                           changes, reloaded=True)
    return ApplyResult(name, True, f"{name}: {len(writes)} file(s) written, {len(removes)} removed", changes)


def _hot_loadable(spec: DaemonSpec, writes: list[RenderedFile], removes: list[str], root: str,
                  control: Any) -> bool:
    """True when only existing HAProxy certificate bundles change and HAProxy runs: those are swapped
    in through its runtime API instead of a reload (a new bundle means a new bind: a reload)."""
    if spec.name != "haproxy" or removes or not writes or not hasattr(control, "set_ssl_cert"):
        return False
    from .render.haproxy import CERT_DIR
    if not all(f.path.startswith(CERT_DIR + "/") and os.path.exists(under(root, f.path)) for f in writes):
        return False
    return bool(control.running("haproxy"))


def _group(path: str) -> str:
    """The group name of ``path`` ("" for root or a missing file)."""
    try:
        gid = os.stat(path).st_gid
    except FileNotFoundError:
        return ""
    try:
        return "" if gid == 0 else grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _restore(backup: dict[str, tuple[str | None, int | None, str]]) -> None:
    """Put files back as they were (a file that did not exist is removed)."""
    for path, (content, mode, group) in backup.items():
        if content is None:
            if os.path.exists(path):
                os.remove(path)
        else:
            write_file(path, content, mode if mode is not None else 0o644, group)


def check_node(model: Mapping[str, Any], secrets: dict[str, Any] | None = None) -> dict[str, tuple[bool, str]]:
    """Run every checker of this node's daemons on freshly rendered files (nothing live is touched)."""
    from .render import daemons
    secrets = secrets or {"certificates": {}, "bgp_passwords": {}}
    out: dict[str, tuple[bool, str]] = {}
    from .render import RenderError
    with tempfile.TemporaryDirectory(prefix="aclb-check-") as empty_root:
        for spec in daemons():
            if spec.wanted(model):
                try:
                    out[spec.name] = stage_and_check(spec, model, secrets, root=_tree_root(spec, empty_root))
                except RenderError as exc:
                    out[spec.name] = (False, f"cannot render: {exc}")
    return out


def _tree_root(spec: DaemonSpec, empty_root: str) -> str:
    """Whole-tree daemons are checked against the host's packaged tree; others need nothing."""
    return "/" if spec.tree else empty_root
