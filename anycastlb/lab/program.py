"""A measuring program in a lab host, driven from the host side.

``python -m MODULE -`` runs inside a lab host (:meth:`~anycastlb.lab.core.Lab.argv`), reads its
JSON spec on stdin, writes ``spec["ready_file"]`` once it measures, stops when
``spec["stop_file"]`` appears, and prints its result as JSON. The prober
(:mod:`anycastlb.lab.outage`) and the long-lived connection holder
(:mod:`anycastlb.lab.longlived`) are such programs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Lab


class LabProgram:
    """One run of ``python -m module -`` in lab host ``source``."""

    def __init__(self, lab: "Lab", source: str, module: str, what: str) -> None:
        self.lab, self.source, self.module, self.what = lab, source, module, what
        self.proc: subprocess.Popen[str] | None = None
        tag = f"{module.rsplit('.', 1)[-1]}-{id(self)}"
        self.stop_file, self.ready_file = lab.statedir / f"{tag}.stop", lab.statedir / f"{tag}.ready"

    def start(self, spec: dict[str, Any], wait: float) -> None:
        """Start it with ``spec`` (plus its stop and ready files); return once it is ready."""
        from .salt import PYTHON

        for f in (self.stop_file, self.ready_file):
            f.unlink(missing_ok=True)
        spec = {**spec, "stop_file": str(self.stop_file), "ready_file": str(self.ready_file)}
        self.proc = subprocess.Popen(
            self.lab.argv(self.source, [PYTHON, "-m", self.module, "-"], cwd=str(self.lab.repo)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec))
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() must not flush it again
        deadline = time.monotonic() + wait
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"the {self.what} in {self.source} did not start: {err[-500:]}")
            time.sleep(0.01)

    def stop(self, wait: float) -> Any:
        """Tell it to stop; its JSON result."""
        assert self.proc is not None, "start() first"
        self.stop_file.touch()
        try:
            out, err = self.proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        finally:
            self.stop_file.unlink(missing_ok=True)
            self.ready_file.unlink(missing_ok=True)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the {self.what} in {self.source} failed ({self.proc.returncode}): {err[-1000:]}")
        return json.loads(out)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def read_spec(argv: list[str]) -> dict[str, Any]:
    """The spec of ``python -m MODULE SPEC.json|-``."""
    import sys

    if argv and argv[0] != "-":
        return json.loads(Path(argv[0]).read_text())
    return json.loads(sys.stdin.read())
