"""``anycastlb lab deploy``: what it commits, how it reads the orchestration's events, what it
prints and its exit code (the push itself runs in tests/integration/test_lifecycle_lab.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from anycastlb.lab import cli, ops
from anycastlb.lab.core import LabError


def test_replace_catalog_copies_a_file_or_a_whole_directory(tmp_path):
    target = tmp_path / "repo" / "campus.yaml"
    target.parent.mkdir()
    target.write_text("old: 1\n")
    source = tmp_path / "new.yaml"
    source.write_text("new: 2\n")
    ops.replace_catalog(target, source)
    assert target.read_text() == "new: 2\n"

    tdir, sdir = tmp_path / "repo" / "catalog", tmp_path / "mine"
    (tdir / "services").mkdir(parents=True)
    (tdir / "root.yaml").write_text("a: 1\n")
    (tdir / "services" / "gone.yaml").write_text("services: {}\n")
    (sdir / "services").mkdir(parents=True)
    (sdir / "root.yaml").write_text("a: 2\n")
    (sdir / "services" / "web.yaml").write_text("services: {www: {}}\n")
    (sdir / ".git").mkdir()
    (sdir / ".git" / "HEAD").write_text("ref: x\n")
    ops.replace_catalog(tdir, sdir)
    files = sorted(str(p.relative_to(tdir)) for p in tdir.rglob("*") if p.is_file())
    assert files == ["root.yaml", "services/web.yaml"]  # a file the new catalog lacks is removed too
    assert (tdir / "root.yaml").read_text() == "a: 2\n"


def test_replace_catalog_refuses_another_kind(tmp_path):
    target = tmp_path / "catalog"
    target.mkdir()
    source = tmp_path / "campus.yaml"
    source.write_text("x: 1\n")
    with pytest.raises(ops.OpsError, match="the lab's catalog is a directory .*deploy a directory"):
        ops.replace_catalog(target, source)
    assert target.is_dir()


def test_deploy_refuses_a_lab_without_catalog_repository(tmp_path):
    lab = SimpleNamespace(statedir=tmp_path, catalog=tmp_path / "elsewhere.yaml")
    (tmp_path / "new.yaml").write_text("x: 1\n")
    with pytest.raises(ops.OpsError, match="not a catalog repository"):
        ops.deploy(lab, tmp_path / "new.yaml")  # type: ignore[arg-type]
    with pytest.raises(ops.OpsError, match="no such file"):
        ops.deploy(lab, tmp_path / "missing.yaml")  # type: ignore[arg-type]


def test_progress_turns_runner_and_job_events_into_steps():
    p = ops.Progress()
    # the orchestration itself and the job polls are no steps
    assert p.feed("salt/run/20261201101500000001/new", {"fun": "runner.state.orchestrate", "fun_args": []}, 0) is None
    assert p.feed("salt/run/20261201101500000002/new",
                  {"fun": "runner.anycastlb.drain", "fun_args": [{"node": "lb1", "timeout": 30}]}, 1.0) is None
    # what the runner asks a minion while it runs is a step of its own, nested
    p.feed("salt/job/20261201101500000009/new", {"fun": "anycastlb.drain", "arg": [], "tgt": "lb1"}, 1.5)
    inner = p.feed("salt/job/20261201101500000009/ret/lb1", {"fun": "anycastlb.drain", "id": "lb1", "success": True,
                                                               "retcode": 0, "return": {"comment": "drained"}}, 2.0)
    assert inner is not None and inner["nested"] and inner["id"] == "anycastlb.drain on lb1"
    assert ops.format_step(inner).startswith("  ok       · anycastlb.drain on lb1")
    step = p.feed("salt/run/20261201101500000002/ret",
                  {"fun": "runner.anycastlb.drain", "success": True,
                   "return": {"result": True, "comment": "lb1 drained:\n every path withdrawn"}}, 3.5)
    assert step == {"id": "anycastlb.drain lb1", "result": True, "comment": "lb1 drained: every path withdrawn",
                    "seconds": 2.5, "nested": False}
    assert p.feed("salt/job/20261201101500000003/new",
                  {"fun": "state.sls", "arg": ["anycastlb", "exclude=[]"], "tgt": "lb1"}, 4.0) is None
    assert p.feed("salt/job/20261201101500000004/new", {"fun": "saltutil.find_job", "arg": ["x"], "tgt": "lb1"}, 5) \
        is None
    assert p.feed("salt/job/20261201101500000004/ret/lb1", {"fun": "saltutil.find_job", "id": "lb1"}, 5.1) is None
    step = p.feed("salt/job/20261201101500000003/ret/lb1", {
        "fun": "state.sls", "id": "lb1", "success": True, "retcode": 2,
        "return": {"a": {"__id__": "anycastlb-haproxy", "result": False, "comment": "haproxy -c failed"},
                   "b": {"__id__": "anycastlb-bird", "result": True, "changes": {}}}}, 9.0)
    assert step is not None and step["id"] == "state.sls anycastlb on lb1" and step["result"] is False
    assert step["comment"] == "anycastlb-haproxy: haproxy -c failed" and step["seconds"] == 5.0
    line = ops.format_step(step)
    assert "FAILED" in line and "state.sls anycastlb on lb1" in line and "haproxy -c failed" in line
    # a runner that returns result False failed, whatever Salt's success says
    p.feed("salt/run/20261201101500000005/new", {"fun": "runner.anycastlb.announced", "fun_args": ["node=lb2"]}, 10)
    step = p.feed("salt/run/20261201101500000005/ret", {"fun": "runner.anycastlb.announced", "success": True,
                                                        "return": {"result": False, "comment": "rr1 lacks 192.0.2.10/32"}},
                  40)
    assert step is not None and step["id"] == "anycastlb.announced lb2" and step["result"] is False


def test_the_orchestrations_result_is_its_return_event_not_its_start():
    args = {"fun": "runner.state.orchestrate", "fun_args": [{"mods": "anycastlb.orch.deploy"}]}
    assert not ops.is_result("salt/run/20261201104302000001/new", args)
    assert ops.is_result("salt/run/20261201104302000001/ret", dict(args, success=True, **{"return": {}}))
    assert not ops.is_result("salt/run/20261201104302000002/ret", {"fun": "runner.event.send", "fun_args": []})
    assert not ops.is_result("salt/run/20261201104302000001/ret", args, mods="site.other")


def _orch_ret(states, success):
    return {"fun": "runner.state.orchestrate", "success": success, "return": {"data": {"salt_master": states}}}


def test_failed_steps_say_what_failed_and_what_the_minion_returned():
    states = {
        "test_|-deploy lock_|-locked_|-succeed_without_changes": {"result": True, "__run_num__": 0, "comment": ""},
        "salt_|-verify lb1_|-anycastlb.verify_|-function": {
            "result": False, "__run_num__": 3, "comment": "Running function anycastlb.verify failed on minions: lb1",
            "changes": {"ret": {"lb1": "not healthy after 30 s: frontend wiki-443 not in haproxy"}}},
    }
    failed = ops.failed_steps(_orch_ret(states, False))
    assert failed == ["verify lb1: Running function anycastlb.verify failed on minions: lb1 "
                      '{"lb1": "not healthy after 30 s: frontend wiki-443 not in haproxy"}']
    done = ops.Deployment("0123456789abcdef", [], _orch_ret(states, False), 12.0)
    assert not done.ok and "FAILED" in done.summary() and "wiki-443" in done.summary()
    # a render error: no states, the orchestration's own words
    bad = {"fun": "runner.state.orchestrate", "success": False,
           "return": {"data": {"salt_master": ["Rendering SLS 'base:anycastlb.orch.deploy' failed: boom"]}}}
    assert ops.failed_steps(bad) and "Rendering SLS" in ops.failed_steps(bad)[0]
    assert not ops.Deployment("0123456789ab", [], bad, 1.0).ok
    ok = {k: dict(v, result=True) for k, v in states.items()}
    done = ops.Deployment("0123456789abcdef", [], _orch_ret(ok, True), 30.0)
    assert done.ok and done.summary() == "deploy of 0123456789ab succeeded in 30.0 s (2 steps)"


@pytest.mark.parametrize("outcome, code", [("ok", 0), ("failed", 1), ("no-push", 1), ("no-lab", 2)])
def test_lab_deploy_exit_code(monkeypatch, tmp_path, capsys, outcome, code):
    cat = tmp_path / "campus.yaml"
    cat.write_text("x: 1\n")
    seen = {}

    def load_lab(prefix, statedir):
        if outcome == "no-lab":
            raise LabError(f"no lab in /var/tmp/{prefix}-lab")
        return SimpleNamespace(prefix=prefix)

    def deploy(lab, catalog, message="", timeout=900, out=None):
        seen.update(catalog=catalog, message=message, timeout=timeout)
        if outcome == "no-push":
            raise ops.OpsError("git push: rejected")
        states = {"salt_|-apply lb1_|-apply lb1_|-state": {"result": outcome == "ok", "__run_num__": 0,
                                                            "comment": "states failed"}}
        return ops.Deployment("ab" * 20, [], _orch_ret(states, outcome == "ok"), 3.0)

    monkeypatch.setattr(cli, "load_lab", load_lab)
    monkeypatch.setattr(ops, "deploy", deploy)
    rc = cli.main(["lab", "deploy", str(cat), "--prefix", "aclbx", "-m", "drop intranet", "--timeout", "60"])
    assert rc == code
    err = capsys.readouterr().err
    if outcome == "no-lab":
        assert "no lab in /var/tmp/aclbx-lab" in err
    else:
        assert seen == {"catalog": str(cat), "message": "drop intranet", "timeout": 60.0}
    if outcome == "no-push":
        assert "git push: rejected" in err


def test_lab_deploy_is_documented():
    root = Path(__file__).resolve().parents[2]
    assert "anycastlb lab deploy" in (root / "README.md").read_text()
    assert "lab deploy" in (root / "docs" / "lab.md").read_text()


@pytest.mark.parametrize("argv", [["status"], ["exec", "mon1", "--", "true"], ["shell", "mon1"]])
def test_lab_commands_without_a_lab_say_so_without_a_traceback(tmp_path, capsys, argv):
    from anycastlb import cli as main_cli
    where = tmp_path / "nolab"
    rc = main_cli.main(["lab", argv[0], "--prefix", "aclbx", "--statedir", str(where), *argv[1:]])
    out = capsys.readouterr()
    assert rc == 2
    assert out.err.startswith(f"anycastlb lab {argv[0]}: no lab in {where}") and "Traceback" not in out.err
