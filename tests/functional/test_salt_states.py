"""anycastlb.configured through Salt's state machinery, against a temporary root.

The daemon is a stand-in registered for these tests ("fakedaemon": its file lists
the node's announcements, its checker refuses any file containing "refuse me"),
so that the state's contract is tested without any real daemon: test mode,
change, no change, refusal. The service controller is a *recorder*: it runs
nothing and remembers each call, so the tests can see what would have been reloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from anycastlb import minion, render
from anycastlb.render import CheckResult, DaemonSpec, RenderedFile

CONF = "/etc/anycastlb-fake/fake.conf"
KNOB: dict[str, str] = {"extra": ""}


def _render(model: dict[str, Any], secrets: dict[str, Any], root: str) -> list[RenderedFile]:
    lines = [f"announce {p}" for p in model["bgp"]["announce"]] + [KNOB["extra"]]
    return [RenderedFile(CONF, "\n".join(lines) + "\n")]


def _check(staging: str, files: list[RenderedFile]) -> CheckResult:
    text = Path(render.under(staging, CONF)).read_text()
    if "refuse me" in text:
        return CheckResult(False, "fakecheck", "fake.conf line 5: refused on purpose")
    return CheckResult(True, "fakecheck", "ok")


class RecordingControl:
    """A recorder standing in for ServiceControl: nothing is started, every call is remembered."""

    calls: list[tuple[str, str]] = []
    running_now: set[str] = set()

    def __init__(self, mode: str | None = None, root: str = "/"):
        self.mode = mode
        self.root = root

    def running(self, daemon: str) -> bool:
        RecordingControl.calls.append(("running", daemon))
        return daemon in self.running_now

    def start(self, daemon: str) -> str:
        RecordingControl.calls.append(("start", daemon))
        self.running_now.add(daemon)
        return f"{daemon} started"

    def reload_or_start(self, daemon: str) -> str:
        RecordingControl.calls.append(("reload_or_start", daemon))
        self.running_now.add(daemon)
        return f"{daemon} reloaded"


@pytest.fixture(scope="module")
def loaders(tmp_path_factory, catalog_copy, campus_secrets, make_minion_opts):
    from saltfactories.utils.functional import Loaders

    spec = render.register(DaemonSpec(name="fakedaemon", wanted=lambda m: m.get("bgp") is not None,
                                      render=_render, check=_check))
    root = tmp_path_factory.mktemp("minion")
    try:
        yield Loaders(make_minion_opts(root, "lb1", catalog_copy, campus_secrets))
    finally:
        render._REGISTRY.pop(spec.name, None)  # pylint: disable=protected-access


@pytest.fixture(autouse=True)
def recorder(monkeypatch):
    monkeypatch.setattr(minion, "control_factory", RecordingControl)
    RecordingControl.calls = []
    RecordingControl.running_now = {"fakedaemon"}
    KNOB["extra"] = ""
    yield RecordingControl


def reloads() -> list[tuple[str, str]]:
    return [c for c in RecordingControl.calls if c[0] != "running"]


def test_pillar_and_module_are_loaded(loaders):
    assert loaders.pillar["anycastlb"]["node"] == "lb1"
    assert "fakedaemon" in loaders.modules.anycastlb.daemons()
    assert "anycastlb.configured" in loaders.states


def test_test_mode_reports_the_diff_and_touches_nothing(loaders, tmp_path):
    ret = loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path), test=True)
    assert ret.result is None
    assert "+announce 192.0.2.10/32" in ret.changes["diff"][CONF]
    assert not (tmp_path / CONF.lstrip("/")).exists()
    assert RecordingControl.calls == []


def test_change_is_written_and_reloaded_then_nothing_more(loaders, tmp_path):
    target = tmp_path / CONF.lstrip("/")
    ret = loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path))
    assert ret.result is True, ret.comment
    assert target.read_text().startswith("announce 192.0.2.10/32\n")
    assert reloads() == [("reload_or_start", "fakedaemon")]
    assert ret.changes["reload"] == "fakedaemon reloaded"

    RecordingControl.calls = []
    again = loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path))
    assert again.result is True and again.changes == {}
    assert "desired state" in again.comment
    assert reloads() == []

    # test mode on an unchanged file: True (not None) and no diff
    quiet = loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path), test=True)
    assert quiet.result is True and quiet.changes == {}


def test_refused_config_keeps_the_old_file_and_reloads_nothing(loaders, tmp_path):
    target = tmp_path / CONF.lstrip("/")
    assert loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path)).result is True
    old = target.read_text()
    RecordingControl.calls = []

    KNOB["extra"] = "refuse me"
    preview = loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path), test=True)
    assert preview.result is None and "+refuse me" in preview.changes["diff"][CONF]

    ret = loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path))
    assert ret.result is False
    assert "refused on purpose" in ret.comment and "untouched" in ret.comment
    assert ret.changes == {}
    assert ret.full_return["skip_watch"] is True
    assert target.read_text() == old
    assert reloads() == []
    assert not [p for p in target.parent.iterdir() if p.name != target.name]  # no temp file left


def test_stopped_daemon_is_started_even_without_a_change(loaders, tmp_path):
    assert loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path)).result is True
    RecordingControl.running_now = set()
    RecordingControl.calls = []
    ret = loaders.states.anycastlb.configured(name="fakedaemon", root=str(tmp_path))
    assert ret.result is True and ret.changes == {"started": True}
    assert reloads() == [("start", "fakedaemon")]


def test_unknown_or_unwanted_daemon_is_a_failure(loaders, tmp_path):
    ret = loaders.states.anycastlb.configured(name="nosuchd", root=str(tmp_path))
    assert ret.result is False and "unknown daemon 'nosuchd'" in ret.comment
    assert reloads() == []


def test_execution_module_render_and_apply(loaders, tmp_path):
    text = loaders.modules.anycastlb.render("fakedaemon")
    assert text == {"fakedaemon": {CONF: "announce 192.0.2.10/32\nannounce 192.0.2.11/32\n"
                                          "announce 192.0.2.20/32\nannounce 2001:db8:1::10/128\n\n"}}
    assert loaders.modules.anycastlb.check("fakedaemon") == {"fakedaemon": {"ok": True, "output": "fakecheck\nok"}}
    KNOB["extra"] = "refuse me"
    assert loaders.modules.anycastlb.check("fakedaemon")["fakedaemon"]["ok"] is False
    ret = loaders.modules.anycastlb.apply("fakedaemon", root=str(tmp_path))
    assert ret["result"] is False and ret["skip_watch"] is True


def test_real_bird_config_through_the_state(loaders, tmp_path):
    """The real BIRD renderer and `bird -p -c` behind the same state (the reload is still recorded)."""
    import shutil

    # bird2 is part of the setup (.ci/setup): its absence is a broken setup, not a reason to skip
    assert shutil.which("bird"), "bird is not installed (run bash .ci/setup)"
    assert "bird" in loaders.modules.anycastlb.daemons(), "the bird renderer is not registered"
    preview = loaders.states.anycastlb.configured(name="bird", root=str(tmp_path), test=True)
    assert preview.result is None
    assert "/etc/bird/bird.conf" in preview.changes["diff"]
    assert not (tmp_path / "etc/bird/bird.conf").exists()
    ret = loaders.states.anycastlb.configured(name="bird", root=str(tmp_path))
    assert ret.result is True, ret.comment
    assert "router id 198.51.100.21" in (tmp_path / "etc/bird/bird.conf").read_text()
    assert reloads() == [("reload_or_start", "bird")]


def test_sysctl_state_goes_through_the_execution_module(loaders):
    ret = loaders.states.anycastlb.sysctl(name="net.anycastlb_test.no_such_key", value=1, test=True)
    assert ret.result is False and ret.changes == {}
    assert "net.anycastlb_test.no_such_key: no such kernel setting" in ret.comment
