"""The long-lived connection holder against a local echo server: what it calls broken, closed, a stall."""
from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

from anycastlb.lab.longlived import Holder, tally

REPO = Path(__file__).resolve().parents[2]


class HostLab:
    """Just enough of a Lab to run a lab program in this namespace."""

    def __init__(self, statedir: Path) -> None:
        self.statedir, self.repo = statedir, REPO

    def argv(self, name: str, argv: list[str], cwd: str = "/") -> list[str]:
        return argv


def echo_server() -> tuple[socket.socket, list[str]]:
    """A responder like the lab's (banner, then echo); its 1st connection is reset after 3 answers,
    its 2nd closed cleanly after 3, its 3rd answers the 3rd request 2.5 s late."""
    srv = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve(conn: socket.socket, i: int) -> None:
        conn.sendall(b"echo 1\n")
        n = 0
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if i == 2 and n == 2:
                    time.sleep(2.5)
                conn.sendall(line + b"\n")
                n += 1
                if n == 3 and i == 0:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()      # RST
                    return
                if n == 3 and i == 1:
                    conn.close()      # FIN
                    return

    def accept() -> None:
        i = 0
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            seen.append(f"conn {i}")
            threading.Thread(target=serve, args=(conn, i), daemon=True).start()
            i += 1
    threading.Thread(target=accept, daemon=True).start()
    return srv, seen


def test_holder_counts_resets_as_broken_clean_closes_apart_and_late_answers_as_stalls(tmp_path):
    srv, seen = echo_server()
    port = srv.getsockname()[1]
    t0 = time.monotonic()
    h = Holder(HostLab(tmp_path), "here", [{"kind": "tcp", "address": "127.0.0.1", "port": port, "name": "echo"}],
               per_target=4, interval=0.05, duration=6).start()
    time.sleep(4)
    res = h.stop()
    srv.close()
    kinds = sorted((e["kind"], e["detail"].split(":")[0]) for e in res["events"])
    assert ("broken", "after 3 answers") in kinds and ("closed", "after 3 answers") in kinds, kinds
    assert any(e["kind"] == "stall" and e["ms"] > 2000 for e in res["events"]), kinds
    assert tally(res["events"], t0, time.monotonic()) == {"broken": 1, "closed": 1, "stall": 1}
    # the broken and the closed connection were opened again: 4 held, 6 opened
    assert res["opened"] == 6 and res["requests"] > 20
