"""The lab's tcp probe counts an answer, not a handshake (real sockets on the loopback)."""

from __future__ import annotations

import socket
import threading

from anycastlb.lab.probe import probe


def _server(reply: bytes | None, close: bool) -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def run() -> None:
        conn, _ = srv.accept()
        if reply is not None:
            conn.sendall(reply)
        if close:
            conn.close()
        else:
            threading.Event().wait(1.0)
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return srv, port


def _tcp(port: int, **extra: object) -> dict:
    return probe({"kind": "tcp", "address": "127.0.0.1", "port": port, "timeout": 0.3, **extra})


def test_a_banner_is_success() -> None:
    srv, port = _server(b"* OK IMAP4rev1 mail1 ready\r\n", close=False)
    with srv:
        r = _tcp(port)
    assert r["ok"] and r["detail"] == "connected: * OK IMAP4rev1 mail1 ready"


def test_a_silent_server_is_a_failure() -> None:
    """What HAProxy does on a tcp frontend whose backends are all down: accept, then nothing."""
    srv, port = _server(None, close=False)
    with srv:
        r = _tcp(port)
    assert not r["ok"] and "no answer within 0.3 s" in r["detail"]


def test_a_close_without_a_word_is_a_failure() -> None:
    srv, port = _server(None, close=True)
    with srv:
        r = _tcp(port)
    assert not r["ok"] and "closed without an answer" in r["detail"]


def test_expect_must_be_in_the_banner() -> None:
    srv, port = _server(b"kdc1 88\n", close=False)
    with srv:
        assert not _tcp(port, expect="kdc2")["ok"]
    srv, port = _server(b"kdc2 88\n", close=False)
    with srv:
        assert _tcp(port, expect="kdc2")["ok"]


def test_load_counts_between_marks(tmp_path) -> None:
    """``marks``: the requests and failures before each mark file appeared."""
    from anycastlb.lab.probe import load

    start, stop = tmp_path / "start", tmp_path / "stop"
    start.touch()  # already there: the window starts at the first request
    r = load({"targets": [{"kind": "tcp", "address": "127.0.0.1", "port": 9, "timeout": 0.05}],
              "interval": 0.0, "max_requests": 3, "marks": [str(start), str(stop)], "stop_file": str(stop)})
    assert r["requests"] == 3 and r["failed"] == 3
    assert r["at_marks"] == [{"requests": 0, "failed": 0, "at_s": r["at_marks"][0]["at_s"]}]
