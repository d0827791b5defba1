"""Operating the lab's fleet: the catalog as a git repository, the reactor, sshd, a node without a minion.

* :func:`prepare` (called by ``lab up`` before Salt starts): copies the catalog into
  ``<statedir>/catalog-repo/`` (a git checkout with one commit, ``origin`` =
  ``<statedir>/catalog.git``, a bare repository whose post-receive hook sends
  ``anycastlb/catalog/changed`` to the master), points the ext_pillar there, and gives
  the master the reactor (``/etc/salt/master.d/anycastlb-ops.conf``).
* :func:`push_catalog`: what an operator does: clone, change, commit, push (inside the
  master node, so the hook reaches the master's event bus, as a push over SSH would).
* :func:`deploy` (``anycastlb lab deploy CATALOG``): a whole catalog pushed that way, the
  orchestration's steps followed as they run (:class:`OrchestrationWatch`), its result.
* :func:`forget_minion`, :func:`start_sshd`, :func:`salt_ssh_roster`, :func:`bootstrap`:
  a node with no minion, brought into Salt by ``salt-ssh`` and ``salt/anycastlb/bootstrap/minion.sls``.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

import yaml

from .salt import BIN, master_node, minion_config, ping, salt_cmd

if TYPE_CHECKING:
    from .core import Lab

EVENT_TAG = "anycastlb/catalog/changed"
BRANCH = "main"
GIT_ENV = ["-c", "user.name=anycastlb lab", "-c", "user.email=lab@example.org", "-c", "init.defaultBranch=main"]
AUTHORIZED_KEYS = "/etc/ssh/anycastlb-lab-authorized_keys"  # in the node's private /etc (never /root)
THIN_DIR = "/var/lib/anycastlb/salt-thin"  # the node's private /var/lib (salt-ssh's default is /var/tmp)


class OpsError(RuntimeError):
    """A lab operation failed; the message says which and why."""


def _git(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(["git", *GIT_ENV, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise OpsError(f"git {' '.join(args)}: {(r.stderr or r.stdout).strip()}")
    return r.stdout.strip()


def repo_paths(lab: "Lab") -> tuple[Path, Path]:
    """(bare repository, the master's checkout)."""
    return lab.statedir / "catalog.git", lab.statedir / "catalog-repo"


HOOK = """#!/bin/sh
# anycastlb lab: a push to {branch} tells the salt-master; its reactor brings the master's
# checkout to the pushed commit and runs the rolling deploy (salt/anycastlb/reactor/catalog_changed.sls).
while read old new ref; do
  [ "$ref" = "refs/heads/{branch}" ] || continue
  {salt_run} --out=quiet event.send {tag} "{{\\"rev\\": \\"$new\\", \\"ref\\": \\"$ref\\"}}" \\
    && echo "anycastlb: sent {tag} for $new"
done
"""


def make_catalog_repo(lab: "Lab") -> Path:
    """The catalog as ``<statedir>/catalog-repo`` (one commit) with a bare ``origin``; returns the new catalog path."""
    bare, work = repo_paths(lab)
    src = Path(lab.catalog)
    for d in (bare, work):
        if d.exists():
            shutil.rmtree(d)
    _git("init", "--quiet", "--bare", "--initial-branch", BRANCH, str(bare))
    hook = bare / "hooks" / "post-receive"
    hook.write_text(HOOK.format(branch=BRANCH, tag=EVENT_TAG, salt_run=shlex.quote(str(BIN / "salt-run"))))
    hook.chmod(0o755)
    _git("init", "--quiet", "--initial-branch", BRANCH, str(work))
    if src.is_dir():
        dst = work / "catalog"
        shutil.copytree(src, dst)
        target = dst
    else:
        target = work / src.name
        shutil.copy2(src, target)
    _git("add", "-A", cwd=work)
    _git("commit", "--quiet", "-m", f"catalog from {src}", cwd=work)
    _git("remote", "add", "origin", str(bare), cwd=work)
    _git("push", "--quiet", "-u", "origin", BRANCH, cwd=work)
    _git("remote", "set-head", "origin", BRANCH, cwd=work)
    return target


def reactor_config() -> dict[str, Any]:
    """The master settings the reactor needs (see docs/operations.md)."""
    reactor = ["salt://anycastlb/reactor/catalog_changed.sls"]
    return {"reactor": [{EVENT_TAG: reactor}, {f"salt/netapi/hook/{EVENT_TAG}": reactor}]}


def prepare(lab: "Lab") -> None:
    """Before Salt starts: the catalog as a git checkout (the ext_pillar reads it) and the reactor."""
    lab.meta["catalog_source"] = str(lab.catalog)
    lab.catalog = make_catalog_repo(lab)
    lab.save()
    master = master_node(lab)
    lab.write_file(master, "/etc/salt/master.d/anycastlb-ops.conf",
                   "# anycastlb lab: reactor on catalog changes\n" + yaml.safe_dump(reactor_config()))


def push_catalog(lab: "Lab", edit: Callable[[Path], None], message: str, allow_empty: bool = False,
                 on_push: Callable[[], None] | None = None) -> str:
    """Clone the catalog repository, let ``edit(checkout_dir)`` change it, commit and push it
    from inside the master node (the post-receive hook sends the event); returns the commit.
    ``allow_empty``: an edit that changes nothing is still committed and pushed (a redeploy).
    ``on_push``: called just before ``git push`` (the operator's clone, edit and commit are done)."""
    bare, work = repo_paths(lab)
    clone = lab.statedir / f"operator-{int(time.time() * 1000)}"
    _git("clone", "--quiet", str(bare), str(clone))
    try:
        edit(clone)
        _git("add", "-A", cwd=clone)
        _git("commit", "--quiet", *(["--allow-empty"] if allow_empty else []), "-m", message, cwd=clone)
        rev = _git("rev-parse", "HEAD", cwd=clone)
        if on_push is not None:
            on_push()
        r = lab.exec(master_node(lab), ["git", *GIT_ENV, "-C", str(clone), "push", "origin", BRANCH], timeout=120)
        if r.returncode != 0:
            raise OpsError(f"git push: {r.stderr.strip()}")
        if "anycastlb: sent" not in r.stderr + r.stdout:
            raise OpsError(f"the post-receive hook did not send the event: {r.stderr.strip()}")
        return rev
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def catalog_file(lab: "Lab") -> Path:
    """The catalog file the master reads (the checkout's copy)."""
    return Path(lab.catalog)


# ----------------------------------------------------------------- a node with no minion, salt-ssh


def forget_minion(lab: "Lab", node: str) -> None:
    """Make ``node`` a fresh node for Salt: its minion stopped, its config and keys gone, its key deleted on the master."""
    lab.stop(node, "salt-minion")
    lab.exec(node, ["sh", "-c", "rm -rf /etc/salt/minion.d /etc/salt/pki /etc/salt/minion_id "
                                "/var/cache/salt/minion"], check=True)
    lab.exec(master_node(lab), [str(BIN / "salt-key"), "-y", "-d", node], timeout=60)


def ssh_key(lab: "Lab") -> Path:
    """The lab's salt-ssh key (``<statedir>/ssh/id_ed25519``), made once."""
    d = lab.statedir / "ssh"
    d.mkdir(mode=0o700, exist_ok=True)
    key = d / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"anycastlb lab {lab.prefix}",
                        "-f", str(key)], check=True, capture_output=True, timeout=30)
    return key


def start_sshd(lab: "Lab", node: str, timeout: float = 10.0) -> int:
    """sshd in ``node`` on its catalog address, with its own host keys and the lab key authorized."""
    from .proc import alive

    key = ssh_key(lab)
    old = lab.registry.get(node, "sshd")
    if old and alive(old["pid"], old.get("start")):
        return int(old["pid"])
    lab.write_file(node, AUTHORIZED_KEYS, (key.with_suffix(".pub")).read_text(), mode=0o600)
    lab.exec(node, ["ssh-keygen", "-A"], check=True)
    addr = lab.host(node).address
    pid = lab.spawn(node, ["/usr/sbin/sshd", "-D", "-e", "-o", f"ListenAddress={addr}",
                           "-o", f"AuthorizedKeysFile={AUTHORIZED_KEYS}", "-o", "PermitRootLogin=prohibit-password",
                           "-o", "PasswordAuthentication=no", "-o", "PidFile=/run/sshd/lab-sshd.pid"], "sshd")
    deadline = time.monotonic() + timeout
    while not lab.exec(node, ["ss", "-Hltn", "sport = :22"], timeout=10).stdout.strip():
        if time.monotonic() > deadline:
            raise OpsError(f"sshd in {node} not listening (see {lab.log_path(node, 'sshd')})")
        time.sleep(0.1)
    return pid


def salt_ssh_roster(lab: "Lab", nodes: list[str]) -> str:
    """``anycastlb roster`` for ``nodes`` with the lab key, thin dir in the node's private /var/lib."""
    from ..compiler import compile_catalog
    from ..roster import roster

    entries = roster(compile_catalog(lab.catalog), priv=str(ssh_key(lab)), nodes=nodes)
    for e in entries.values():
        e["thin_dir"] = THIN_DIR
        # /root is the host's (shared): its shell profile may put a pyenv shim first on PATH,
        # which salt-ssh's shim cannot run under `set -u`. The node's own Python, please.
        e["set_path"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        # nodes get fresh host keys every lab: record them nowhere (never the host's known_hosts)
        e["ssh_options"] = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"]
    return "# anycastlb lab: generated from the catalog (anycastlb roster)\n" + yaml.safe_dump(entries)


def bootstrap_pillar(lab: "Lab", node: str) -> dict[str, Any]:
    """The lab's ``anycastlb_bootstrap`` pillar: the venv's salt-minion, started as a daemon."""
    master = lab.host(master_node(lab)).address
    assert master, "the salt-master has no IPv4 address"
    extra = {k: v for k, v in minion_config(lab, node, master).items() if k not in ("id", "master")}
    return {"anycastlb_bootstrap": {"install": "none", "start": "daemon",
                                    "command": f"{BIN / 'salt-minion'} -d -l warning --disable-keepalive",
                                    "master": master, "config": extra}}


def bootstrap(lab: "Lab", node: str, timeout: float = 180.0) -> dict[str, Any]:
    """``salt-ssh NODE state.apply anycastlb.bootstrap.minion`` from the master node; wait until NODE answers test.ping."""
    t0 = time.monotonic()
    master = master_node(lab)
    lab.write_file(master, "/etc/salt/roster", salt_ssh_roster(lab, [node]))
    argv = [str(BIN / "salt-ssh"), "--roster-file=/etc/salt/roster", "--no-host-keys", "--out=json", "--static",
            node, "state.apply", "anycastlb.bootstrap.minion", "pillar=" + json.dumps(bootstrap_pillar(lab, node))]
    r = lab.exec(master, argv, timeout=timeout)
    try:
        out = json.loads(r.stdout)[node]
    except (ValueError, KeyError, TypeError):
        raise OpsError(f"salt-ssh {node} gave no result (rc {r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
    states = out if isinstance(out, dict) else {}
    failed = [f"{s.get('__id__')}: {s.get('comment')}" for s in states.values()
              if isinstance(s, dict) and s.get("result") is False]
    if r.returncode != 0 or failed or not states:
        raise OpsError(f"salt-ssh {node} state.apply anycastlb.bootstrap.minion failed (rc {r.returncode}): "
                       f"{failed or out}")
    ssh_seconds = round(time.monotonic() - t0, 1)
    deadline = time.monotonic() + timeout
    while node not in ping(lab, timeout=3):
        if time.monotonic() > deadline:
            raise OpsError(f"{node} bootstrapped but not answering test.ping (see its /var/log/salt/minion)")
        time.sleep(1)
    return {"states": len(states), "salt_ssh_seconds": ssh_seconds, "seconds": round(time.monotonic() - t0, 1)}


def orchestrate(lab: "Lab", mods: str = "anycastlb.orch.deploy", pillar: dict[str, Any] | None = None,
                timeout: float = 900) -> tuple[int, dict[str, Any], str]:
    """``salt-run state.orchestrate MODS`` on the master: (rc, parsed JSON, raw output)."""
    argv = [str(BIN / "salt-run"), "state.orchestrate", mods, "--out=json"]
    if pillar:
        argv.append("pillar=" + json.dumps(pillar))
    r = lab.exec(master_node(lab), argv, timeout=timeout)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        data = {}
    return r.returncode, data, r.stdout + r.stderr


def salt_run(lab: "Lab", *args: str, timeout: float = 300) -> tuple[int, Any, str]:
    """``salt-run ARGS --out=json`` on the master: (rc, parsed JSON or None, raw output)."""
    r = lab.exec(master_node(lab), [str(BIN / "salt-run"), *args, "--out=json"], timeout=timeout)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        data = None
    return r.returncode, data, r.stdout + r.stderr


#: The events :class:`OrchestrationWatch` follows: runners' returns and, with ``on_step``, the
#: runners and jobs the orchestration starts (an orchestration sends no event per state on a
#: master: its opts are ``local``), each a step of the deploy.
RET_EVENTS = "salt/run/*/ret"
STEP_EVENTS = r"salt/(run/[0-9]+/(new|ret)|job/[0-9]+/(new|ret/.*))"
#: Runners and functions that are no step of a deploy (the orchestration itself, event watchers, the
#: hook's event, job polls).
NOT_STEPS = ("runner.state.orchestrate", "runner.state.event", "runner.event.send", "saltutil.find_job",
             "saltutil.running")


def _kwargs(args: Any) -> dict[str, Any]:
    """The keyword arguments in a job's or runner's ``arg``/``fun_args`` (dicts, or ``key=value`` strings)."""
    out: dict[str, Any] = {}
    for a in args if isinstance(args, list) else []:
        if isinstance(a, dict):
            out.update({k: v for k, v in a.items() if not str(k).startswith("__")})
        elif isinstance(a, str) and "=" in a:
            k, _, v = a.partition("=")
            out[k] = v
    return out


def _detail(value: Any) -> str:
    """One line saying what a runner or a function returned (its comment, else the value)."""
    if isinstance(value, dict) and value.get("comment"):
        value = value["comment"]
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return " ".join(text.split())


class Progress:
    """The deploy's steps as they finish, from the master's runner and job events: each runner the
    orchestration calls (``anycastlb.drain`` ...) and each function it runs on a minion
    (``state.sls anycastlb``, ``anycastlb.verify``) is a step, ``{"id", "result", "comment", "seconds",
    "nested"}``; ``nested``: a function a runner ran (printed indented; it finishes before its runner)."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[str, float]] = {}
        self.nested: set[str] = set()  # jobs a runner started (``anycastlb.drain`` asks the node): shown indented

    def feed(self, tag: str, data: dict[str, Any], now: float) -> dict[str, Any] | None:
        """The step an event finishes (None: it starts one, or is none)."""
        parts = tag.split("/")
        if len(parts) < 4 or parts[0] != "salt" or parts[1] not in ("run", "job"):
            return None
        jid, kind = parts[2], parts[3]
        fun = str(data.get("fun") or "")
        if fun in NOT_STEPS:
            return None
        if kind == "new":
            args = data.get("fun_args") if parts[1] == "run" else data.get("arg")
            kw = _kwargs(args)
            if parts[1] == "run":
                label = fun.removeprefix("runner.") + (f" {kw['node']}" if kw.get("node") else "")
            else:
                pos = [a for a in args or [] if isinstance(a, str) and "=" not in a][:1]
                label = " ".join([fun, *pos]) + f" on {data.get('tgt')}"
            if parts[1] == "job" and any(k.startswith("run:") for k in self.started):  # a runner is running
                self.nested.add(jid)
            self.started[("run:" if parts[1] == "run" else "") + jid] = (label, now)
            return None
        key = ("run:" if parts[1] == "run" else "") + jid
        if kind != "ret" or key not in self.started:
            return None
        label, t0 = self.started[key] if parts[1] == "job" else self.started.pop(key)
        if parts[1] == "job":
            minion = str(data.get("id") or (parts[4] if len(parts) > 4 else ""))
            label = label.rsplit(" on ", 1)[0] + f" on {minion}"
            ok = data.get("success") is not False and not data.get("retcode")
        else:
            ret = data.get("return")
            ok = data.get("success") is not False and not (isinstance(ret, dict) and ret.get("result") is False)
        ret = data.get("return")
        if parts[1] == "job" and fun.startswith("state.") and isinstance(ret, dict):
            states = [v for v in ret.values() if isinstance(v, dict)]
            bad = [f"{v.get('__id__')}: {v.get('comment')}" for v in states if v.get("result") is False]
            comment = "; ".join(bad) if bad else f"{len(states)} states, {sum(bool(v.get('changes')) for v in states)} changed"
        else:
            comment = _detail(ret)
        return {"id": label, "result": ok, "comment": comment, "seconds": round(now - t0, 1),
                "nested": jid in self.nested}


def format_step(step: dict[str, Any]) -> str:
    """A step as ``lab deploy`` prints it: verdict, what ran, seconds, what it said (one line)."""
    verdict = "ok" if step["result"] else "FAILED"
    what = ("  · " if step.get("nested") else "") + step["id"]
    return f"  {verdict:6} {what:36} {step['seconds']:6.1f} s  {step['comment'][:100]}"


def is_result(tag: str, data: dict[str, Any], mods: str = "anycastlb.orch.deploy") -> bool:
    """Whether an event is the return of ``state.orchestrate MODS`` (not its start)."""
    return (tag.startswith("salt/run/") and tag.endswith("/ret") and data.get("fun") == "runner.state.orchestrate"
            and mods in json.dumps(data.get("fun_args")))


class OrchestrationWatch:
    """Follows the master's event bus for the reactor's ``anycastlb.orch.deploy`` run (start it before the push).

    ``with OrchestrationWatch(lab) as w: push_catalog(...); ret = w.wait(400)`` returns the
    runner's return event (``ret["success"]``, ``ret["return"]``). ``on_step`` is called with
    each finished step (:class:`Progress`) while the orchestration runs.
    """

    def __init__(self, lab: "Lab", mods: str = "anycastlb.orch.deploy",
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.mods = mods
        self.on_step = on_step
        self.proc = subprocess.Popen(
            lab.argv(master_node(lab), [str(BIN / "salt-run"), "state.event",
                                        f"tagmatch={STEP_EVENTS if on_step else RET_EVENTS}", "pretty=False"]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def wait(self, timeout: float) -> dict[str, Any]:
        """The orchestration's return event; OpsError if none came within ``timeout`` seconds."""
        import selectors

        deadline = time.monotonic() + timeout
        progress = Progress()
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, min(5.0, deadline - time.monotonic()))):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    break
                tag, _, body = line.partition("\t")
                try:
                    data = json.loads(body)
                except ValueError:
                    continue
                step = progress.feed(tag, data, time.monotonic()) if self.on_step else None
                if step is not None and self.on_step:
                    self.on_step(step)
                if is_result(tag, data, self.mods):
                    return data
        finally:
            sel.close()
        raise OpsError(f"the reactor's {self.mods} did not return within {timeout:.0f} s")

    def close(self) -> None:
        """Stop following the event bus."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "OrchestrationWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def orchestration_steps(ret: dict[str, Any]) -> list[str]:
    """The state ids of an orchestration's return, in the order they ran (``drain lb1``, ``apply lb1`` ...).

    ``ret`` is the runner's return event (:meth:`OrchestrationWatch.wait`) or
    ``{"return": <salt-run --out=json output>}``.
    """
    return [name for name, _ in orchestration_timings(ret)]


def orchestration_timings(ret: dict[str, Any]) -> list[tuple[str, float]]:
    """(state id, seconds it took) of an orchestration's return, in the order they ran."""
    data = (ret.get("return") or {}).get("data") or {}
    states: Any = next(iter(data.values()), {}) if isinstance(data, dict) else {}
    if not isinstance(states, dict):
        return []
    rows = sorted((v.get("__run_num__", 0), k.split("_|-")[1], float(v.get("duration") or 0) / 1000)
                  for k, v in states.items() if isinstance(v, dict))
    return [(name, secs) for _, name, secs in rows]


def failed_steps(ret: dict[str, Any]) -> list[str]:
    """``"<state id>: <comment>"`` of every failed state of an orchestration's return event; the
    return itself when the orchestration did not run its states (a render error, a refused pillar)."""
    body = ret.get("return")
    data = body.get("data") if isinstance(body, dict) else None
    states: Any = next(iter(data.values()), None) if isinstance(data, dict) and data else None
    if not isinstance(states, dict) or not all(isinstance(v, dict) for v in states.values()):
        return [] if ret.get("success") is True else [json.dumps(body)[:2000]]
    rows = []
    for k, v in states.items():
        if v.get("result") is False:
            # salt.function says only "Running function X failed on minions": what they returned is in changes
            said = (v.get("changes") or {}).get("ret") if isinstance(v.get("changes"), dict) else None
            comment = " ".join(str(v.get("comment") or "").split()) + (f" {_detail(said)[:1500]}" if said else "")
            rows.append((v.get("__run_num__", 0), k.split("_|-")[1], comment))
    return [f"{name}: {comment}" for _, name, comment in sorted(rows)]


def replace_catalog(target: Path, source: Path) -> None:
    """Make ``target`` (the catalog in a checkout: a file, or a directory) a copy of ``source``,
    which must be of the same kind (the ext_pillar reads that one path)."""
    if source.is_dir() != target.is_dir():
        kind = "directory" if target.is_dir() else "file"
        raise OpsError(f"the lab's catalog is a {kind} ({target.name}); deploy a {kind}, not {source}")
    if source.is_dir():
        shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    else:
        shutil.copyfile(source, target)


@dataclass
class Deployment:
    """What :func:`deploy` did: the pushed commit, each step as it finished, the orchestration's return event."""

    rev: str
    steps: list[dict[str, Any]]
    ret: dict[str, Any]
    seconds: float

    @property
    def ok(self) -> bool:
        """The orchestration ran and every step succeeded."""
        return self.ret.get("success") is True and not failed_steps(self.ret)

    def summary(self) -> str:
        """The result line(s) ``lab deploy`` ends with."""
        if self.ok:
            return (f"deploy of {self.rev[:12]} succeeded in {self.seconds:.1f} s "
                    f"({len(orchestration_steps(self.ret))} steps)")
        return (f"deploy of {self.rev[:12]} FAILED after {self.seconds:.1f} s:\n"
                + "\n".join(f"  {f}" for f in failed_steps(self.ret) or ["the orchestration did not succeed"]))


def deploy(lab: "Lab", catalog: str | Path, message: str = "", timeout: float = 900,
           out: TextIO | None = None) -> Deployment:
    """``anycastlb lab deploy CATALOG``: commit ``catalog`` (a file or a directory, of the kind the
    lab was built from) into the lab's catalog repository, push it from the master node (hook,
    reactor, ``orch.deploy``), print each orchestration step as it finishes and the result to
    ``out``. OpsError when it cannot push or no orchestration returns within ``timeout``."""
    source = Path(catalog).resolve()
    if not source.exists():
        raise OpsError(f"{catalog}: no such file or directory")
    _bare, work = repo_paths(lab)
    try:
        rel = Path(lab.catalog).resolve().relative_to(work.resolve())
    except ValueError:
        raise OpsError(f"this lab reads {lab.catalog}, not a catalog repository (was it built with Salt?)") from None
    message = message or f"anycastlb lab deploy {source.name}"
    steps: list[dict[str, Any]] = []

    def show(step: dict[str, Any]) -> None:
        steps.append(step)
        if out:
            print(format_step(step), file=out, flush=True)

    t0 = time.monotonic()
    with OrchestrationWatch(lab, on_step=show) as watch:
        rev = push_catalog(lab, lambda clone: replace_catalog(clone / rel, source), message, allow_empty=True)
        if out:
            print(f"pushed {rev[:12]} ({message}) from {master_node(lab)}: the hook sent {EVENT_TAG}; "
                  f"orch.deploy runs", file=out, flush=True)
        ret = watch.wait(timeout)
    done = Deployment(rev, steps, ret, time.monotonic() - t0)
    if out:
        print(done.summary(), file=out, flush=True)
    return done


__all__ = ["EVENT_TAG", "Deployment", "OpsError", "OrchestrationWatch", "bootstrap", "deploy", "failed_steps",
           "format_step", "orchestration_steps", "forget_minion", "make_catalog_repo", "orchestrate", "prepare",
           "push_catalog", "replace_catalog", "salt_cmd", "salt_run", "start_sshd", "Progress", "is_result"]


def restart_minions(lab: "Lab", nodes: list[str] | None = None, wait: float = 120.0) -> float:
    """Restart the lab's minions (every process of theirs, found in the nodes' mount namespaces);
    return the seconds until all answer ``test.ping``.

    Needed after the first highstate: its nftables ruleset is loaded while the minions'
    connections to the master are open; conntrack picks those up mid-stream without their
    window scaling, marks their packets invalid and the ruleset drops them, so the master
    sees the minions as "Not connected" until they reconnect.
    """
    from . import nodefs, proc

    if lab.init == "systemd":  # booted nodes: the minion is a unit
        nodes = list(nodes or lab.nodes)
        t0 = time.monotonic()
        for n in nodes:
            lab.exec(n, ["systemctl", "restart", "salt-minion.service"], check=True, timeout=60)
        while not set(nodes) <= ping(lab, timeout=3):
            if time.monotonic() - t0 > wait:
                raise OpsError(f"minions not answering after a restart: {sorted(set(nodes) - ping(lab))}")
            time.sleep(1)
        return round(time.monotonic() - t0, 1)
    nodes = list(nodes or [n for n in lab.nodes if lab.registry.get(n, "salt-minion")])
    inodes = {i for n in nodes if (i := proc.ns_inode(nodefs.mnt_file(lab.statedir, n))) is not None}
    pids = []
    for p in proc.mntns_pids(inodes):
        try:
            if b"salt-minion" in Path(f"/proc/{p}/cmdline").read_bytes():
                pids.append(p)
        except OSError:
            continue
    proc.kill_all(pids, 5.0)
    t0 = time.monotonic()
    for n in nodes:
        lab.registry.remove(n, "salt-minion")
        (lab.node_root(n) / "run" / "salt-minion.pid").unlink(missing_ok=True)
        lab.spawn(n, [str(BIN / "salt-minion"), "-l", "warning", "--disable-keepalive"], "salt-minion")
    while not set(nodes) <= ping(lab, timeout=3):
        if time.monotonic() - t0 > wait:
            raise OpsError(f"minions not answering after a restart: {sorted(set(nodes) - ping(lab))}")
        time.sleep(1)
    return round(time.monotonic() - t0, 1)
