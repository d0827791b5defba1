"""One HAProxy node in a network namespace of its own, for the netns tests.

Our namespace (documentation prefixes on its ``lo`` only), a temp root with the node's
files, the catalog's ``lb1`` model, :class:`ServiceControl` in direct mode, and the PIDs we
started: ``down`` stops HAProxy, kills those and nothing else, then removes both.
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self

from anycastlb.compiler import compile_catalog
from anycastlb.service import ServiceControl


def sh(*argv: str) -> None:
    subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=30)


class NetnsNode:
    """Namespace ``aclb<tag>XXXX``, temp root ``/tmp/aclb<tag>-*``, the model of ``catalog``'s lb1."""

    def __init__(self, tag: str, catalog: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix=f"aclb{tag}-", dir="/tmp"))
        self.ns = f"aclb{tag}{secrets.token_hex(2)}"
        self.root = str(self.base / "root")
        self.ctl = ServiceControl("direct", root=self.root, prefix=["ip", "netns", "exec", self.ns])
        self.procs: list[subprocess.Popen[str]] = []
        (self.base / "catalog.yaml").write_text(catalog)
        self.model: dict[str, Any] = compile_catalog(self.base / "catalog.yaml").nodes["lb1"]

    def up(self) -> None:
        """The node's namespace and what runs in it (each test's own)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """``up``; torn down again if that fails half way (``with Node() as n``: ``down`` at the end)."""
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def namespace(self, *addresses: str) -> None:
        """Create the namespace, ``lo`` up with ``addresses`` (host routes) on it."""
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        for addr in addresses:
            sh("ip", "-n", self.ns, "addr", "add", f"{addr}/32", "dev", "lo")

    def spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[str]:
        """Start ``argv`` in the namespace; ``down`` kills it."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], text=True, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def stop_haproxy(self) -> None:
        """SIGTERM to the master: it stops every worker, old ones too."""
        with contextlib.suppress(Exception):
            self.ctl.stop("haproxy")

    def down(self) -> None:
        self.stop_haproxy()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
