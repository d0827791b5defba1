"""`lab up` names what this machine lacks before it builds anything."""
from __future__ import annotations

import shutil

import pytest

from anycastlb.lab import core
from anycastlb.lab.cli import main


@pytest.fixture
def lacking(monkeypatch: pytest.MonkeyPatch):
    def set_missing(*progs: str, uid: int = 0) -> None:
        real = shutil.which
        monkeypatch.setattr(core.shutil, "which", lambda p, path=None: None if p in progs else real(p, path=path))
        monkeypatch.setattr(core.os, "geteuid", lambda: uid)
    return set_missing


def test_missing_programs_are_named_with_their_package(lacking) -> None:
    lacking("systemd-nspawn", "haproxy", uid=1000)
    out = core.missing_prerequisites("systemd", salt=False)
    assert "root (the lab creates network namespaces and mounts)" in out
    assert "haproxy (Debian package haproxy)" in out
    assert "systemd-nspawn (apt-get install --no-install-recommends systemd-container)" in out
    assert not any("systemd-nspawn" in line for line in core.missing_prerequisites("direct", salt=False))


def test_a_virtualenv_path_with_proxy_in_it_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Salt takes every program whose path contains 'proxy' for a proxy minion: found before the lab is built."""
    venv = tmp_path / "haproxy-tools" / ".venv" / "bin"
    venv.mkdir(parents=True)
    for prog in ("python", "salt-master", "salt-minion", "salt"):
        (venv / prog).touch()
    monkeypatch.setattr(core.sys, "executable", str(venv / "python"))
    out = core.missing_prerequisites("direct")
    assert any("does not contain 'proxy'" in line and str(venv) in line for line in out)
    assert not any("next to" in line for line in out)


def test_lab_up_stops_at_once_naming_what_is_missing(lacking, capsys: pytest.CaptureFixture[str]) -> None:
    lacking("systemd-nspawn")
    assert main(["lab", "up", "--init", "systemd", "--prefix", "aclbpq", "--statedir", "/nonexistent/aclbpq"]) == 1
    err = capsys.readouterr().err
    assert "lab up needs what this machine lacks" in err and "systemd-container" in err
    assert "Traceback" not in err
