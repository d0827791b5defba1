"""What the lab benchmarks share: the machine they ran on, a campus lab that is always torn
down, CPU accounting from /proc, and the statistics they print.

Every lab benchmark builds its own lab with a unique prefix under ``/var/tmp``, runs
bounded probes inside it only, and tears it down from ``finally`` and from SIGTERM/SIGHUP
(:func:`anycastlb.lab.core.teardown_on_failure`). Run them one at a time on a quiet
machine: two labs at once share two cores, and every absolute time doubles.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CAMPUS = ROOT / "anycastlb" / "examples" / "campus.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def need_root() -> None:
    """Exit with a message unless we can build a lab."""
    if os.geteuid() != 0 or not shutil.which("haproxy"):
        sys.exit("this benchmark builds a lab: run it as root after `bash .ci/setup`")


def _version(argv: Sequence[str]) -> str:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (r.stdout or r.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> str:
    """One paragraph naming the machine, its load and the daemons' versions."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    osname = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {osname}, kernel {platform.release()}, "
            f"load average {load}\n"
            f"daemons: {_version(['haproxy', '-v'])}; {_version(['bird', '--version'])}; "
            f"{_version(['keepalived', '--version'])}")


@contextlib.contextmanager
def lab(catalog: Path = CAMPUS, tag: str = "bench", restart_minions: bool = True,
        salt: bool = True) -> Iterator["object"]:
    """A lab of a copy of ``catalog`` for the duration of the block; always torn down
    (:func:`anycastlb.lab.cli.temporary_lab`)."""
    from anycastlb.lab.cli import temporary_lab

    with temporary_lab(catalog, tag, restart_minions=restart_minions, salt=salt) as the_lab:
        print(f"lab {the_lab.prefix} up in {the_lab.up_seconds:.1f} s", flush=True)  # type: ignore[attr-defined]
        yield the_lab


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (and their reaped children) in seconds, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def summary(values: Sequence[float]) -> str:
    """``median M (min–max, n N)`` in milliseconds."""
    if not values:
        return "no value"
    return f"median {statistics.median(values):.0f} ms ({min(values):.0f}–{max(values):.0f}, n {len(values)})"


def median(values: Sequence[float]) -> float:
    """The median (0 for no values)."""
    return statistics.median(values) if values else 0.0
