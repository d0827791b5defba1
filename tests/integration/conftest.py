"""What the lab tests share: a campus lab in its own state dir, always torn down."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"


def need_root() -> None:
    """Skip unless this can build a lab."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("haproxy"):
        pytest.skip("the lab needs root, iproute2 and the daemons (run .ci/setup)")


@contextlib.contextmanager
def campus_lab(tag: str, restart_minions: bool = False) -> Iterator[object]:
    """``lab up`` of a copy of the shipped campus catalog (prefix ``aclb<tag><hex4>``); the lab
    carries ``up_seconds`` and ``up_output``. Torn down after; no namespace may be left."""
    need_root()
    from anycastlb.lab import ops
    from anycastlb.lab.cli import lab_up
    from anycastlb.lab.core import LabError

    work = Path(tempfile.mkdtemp(prefix=f"aclb-{tag}-", dir="/var/tmp"))
    catalog = work / "campus.yaml"
    shutil.copy(CAMPUS, catalog)
    prefix = f"aclb{tag[:2]}{secrets.token_hex(2)}"
    out = io.StringIO()
    t0 = time.monotonic()
    try:
        lab = lab_up(catalog, prefix=prefix, statedir=work / "state", out=out)
    except BaseException:
        print(out.getvalue())
        shutil.rmtree(work, ignore_errors=True)
        raise
    lab.up_seconds = time.monotonic() - t0
    lab.up_output = out.getvalue()
    try:
        if restart_minions:  # the first highstate's firewall catches their connections mid-stream
            ops.restart_minions(lab)
        yield lab
    finally:
        try:
            lab.down()
        except LabError as exc:  # pragma: no cover - reported; the assertion below shows it
            print(f"teardown: {exc}")
        shutil.rmtree(work, ignore_errors=True)
        left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if n.startswith(prefix)]
        assert not left, f"the lab left namespaces behind: {left}"


@pytest.fixture(scope="session")
def campus_lab_factory():
    """:func:`campus_lab` for module fixtures (conftest modules are not imported by name)."""
    return campus_lab
