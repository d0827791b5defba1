"""anycastlb.minion.status: what the health agent says, in full or brief (what the rolling deploy reads)."""
from __future__ import annotations

import json
from pathlib import Path

from anycastlb import minion
from anycastlb.compiler import compile_catalog


class Running:
    def running(self, name: str) -> bool:
        return True


def test_brief_status_keeps_only_the_announced_prefixes(tmp_path: Path, campus_catalog: Path) -> None:
    model = compile_catalog(campus_catalog).nodes["lb1"]
    conf = tmp_path / "healthd.json"
    state = tmp_path / "state.json"
    conf.write_text(json.dumps({"state_file": str(state), "drain_file": str(tmp_path / "drain"),
                                "announcements": [{"prefix": "192.0.2.10/32", "service": "www",
                                                   "watch": {"type": "always"}}]}))
    state.write_text(json.dumps({"pid": 1, "drained": False, "prefixes": {
        "192.0.2.10/32": {"announced": True, "why": "www: 2 of 2 servers up"},
        "192.0.2.11/32": {"announced": False, "why": "www: 0 of 2 servers up"}}}))
    full = minion.status(model, Running(), config=str(conf), pidfile=str(tmp_path / "none.pid"))
    brief = minion.status(model, Running(), config=str(conf), pidfile=str(tmp_path / "none.pid"), brief=True)
    assert full["healthd"]["prefixes"]["192.0.2.11/32"]["why"] == "www: 0 of 2 servers up"
    assert brief["healthd"]["prefixes"] == {"192.0.2.10/32": {"announced": True}}
    assert {k: v for k, v in brief.items() if k != "healthd"} == {k: v for k, v in full.items() if k != "healthd"}
    assert brief["drain_file"] is False and brief["daemons"] == {d: True for d in minion.wanted(model)}
