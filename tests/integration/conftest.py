"""What the lab tests share: a campus lab in its own state dir, always torn down."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Iterator

import pytest


def need_root() -> None:
    """Skip unless this can build a lab."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("haproxy"):
        pytest.skip("the lab needs root, iproute2 and the daemons (run .ci/setup)")


@contextlib.contextmanager
def campus_lab(tag: str, restart_minions: bool = False, init: str = "direct") -> Iterator[object]:
    """:func:`anycastlb.lab.cli.temporary_lab` of the shipped campus catalog (``init="systemd"``:
    every node boots systemd); afterwards no namespace of the lab may be left."""
    need_root()
    from anycastlb.lab.cli import temporary_lab

    prefix = ""
    try:
        with temporary_lab(tag=tag, restart_minions=restart_minions, init=init) as lab:
            prefix = lab.prefix
            yield lab
    finally:
        left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if prefix and n.startswith(prefix)]
        assert not left, f"the lab left namespaces behind: {left}"


@pytest.fixture(scope="session")
def campus_lab_factory():
    """:func:`campus_lab` for module fixtures (conftest modules are not imported by name)."""
    return campus_lab
