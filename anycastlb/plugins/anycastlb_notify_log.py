#!/usr/bin/python3
# managed by anycastlb: edit the catalog, not this file
"""Icinga2 notification command that appends one line per notification to a log file.

Mail is not assumed to exist; this is the notification every install has. Lines are
tab-separated: time, type, user, host, service (``-`` for a host), state, output.
"""

from __future__ import annotations

import argparse
import fcntl
import sys
import time


def line(args: argparse.Namespace, now: float | None = None) -> str:
    """The log line for one notification (tabs and newlines in fields are flattened)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
    fields = [stamp, args.type, args.user, args.host, args.service or "-", args.state, args.output]
    return "\t".join(" ".join(str(f).split()) for f in fields) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Append the line; exit 0, or 3 (UNKNOWN) when the log cannot be written."""
    p = argparse.ArgumentParser(prog="anycastlb_notify_log", description=__doc__.split("\n\n")[0])
    p.add_argument("--log", required=True)
    for opt in ("type", "user", "host", "service", "state", "output"):
        p.add_argument(f"--{opt}", default="")
    args = p.parse_args(argv)
    try:
        with open(args.log, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(line(args))
    except OSError as exc:
        print(f"cannot write {args.log}: {exc}", file=sys.stderr)
        return 3
    return 0


def console_main() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
