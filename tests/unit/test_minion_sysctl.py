"""anycastlb.minion.sysctl: the kernel setting the common sls keeps (liberal conntrack), read and written
through a /proc/sys tree (a temp directory here)."""
from __future__ import annotations

from pathlib import Path

from anycastlb.minion import sysctl

KEY = "net.netfilter.nf_conntrack_tcp_be_liberal"


def _proc(tmp_path: Path, value: str | None) -> Path:
    f = tmp_path / "net" / "netfilter" / "nf_conntrack_tcp_be_liberal"
    if value is not None:
        f.parent.mkdir(parents=True)
        f.write_text(value + "\n")
    return f


def test_a_setting_that_is_right_changes_nothing_and_loads_nothing(tmp_path: Path) -> None:
    f = _proc(tmp_path, "1")
    loaded: list[str] = []
    ret = sysctl(KEY, "1", proc=str(tmp_path), load=loaded.append)
    assert ret["result"] is True and ret["changes"] == {} and loaded == [] and f.read_text() == "1\n"


def test_a_wrong_setting_is_written_and_test_mode_only_says_so(tmp_path: Path) -> None:
    f = _proc(tmp_path, "0")
    dry = sysctl(KEY, "1", test=True, proc=str(tmp_path))
    assert dry["result"] is None and dry["changes"] == {KEY: {"old": "0", "new": "1"}} and f.read_text() == "0\n"
    ret = sysctl(KEY, "1", proc=str(tmp_path))
    assert ret["result"] is True and ret["changes"] == {KEY: {"old": "0", "new": "1"}} and f.read_text() == "1\n"


def test_a_missing_conntrack_key_loads_the_module_first_and_fails_if_still_missing(tmp_path: Path) -> None:
    f = _proc(tmp_path, None)

    def modprobe(mod: str) -> None:
        assert mod == "nf_conntrack"
        f.parent.mkdir(parents=True)
        f.write_text("0\n")
    assert sysctl(KEY, "1", proc=str(tmp_path), load=modprobe)["changes"] == {KEY: {"old": "0", "new": "1"}}
    ret = sysctl("net.netfilter.nf_conntrack_nothing", "1", proc=str(tmp_path), load=lambda mod: None)
    assert ret["result"] is False and "no such kernel setting" in ret["comment"]
