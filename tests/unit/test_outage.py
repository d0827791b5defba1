"""The outage arithmetic and the paced prober, against a real local TCP listener."""

from __future__ import annotations

import socket
import threading
import time

from anycastlb.lab.outage import failures, outage, run


def test_outage_spans_first_to_last_failure_plus_one_interval() -> None:
    tl = [(0.00, True, 1, ""), (0.02, False, 200, "timeout"), (0.04, False, 200, "timeout"),
          (0.06, False, 200, "refused"), (0.08, True, 1, "")]
    assert outage(tl) == 60.0
    assert outage(tl, since=0.05) == 20.0
    assert outage(tl, until=0.01) == 0.0
    assert [s[0] for s in failures(tl, 0.03, 0.07)] == [0.04, 0.06]


def test_the_prober_sees_a_listener_go_away_and_come_back() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve(s: socket.socket, until: threading.Event) -> None:
        s.settimeout(0.05)
        while not until.is_set():
            try:
                c, _ = s.accept()
                c.sendall(b"up\n")  # the tcp probe counts an answer, not a handshake
                c.close()
            except socket.timeout:
                continue
            except OSError:
                return

    threading.Thread(target=serve, args=(srv, stop), daemon=True).start()
    result: list = []
    t = threading.Thread(target=lambda: result.extend(run(
        {"target": {"kind": "tcp", "address": "127.0.0.1", "port": port}, "interval": 0.02,
         "timeout": 0.2, "duration": 1.5})))
    t.start()
    time.sleep(0.4)
    down_at = time.monotonic()
    stop.set()
    srv.close()  # connections are refused from here on
    time.sleep(0.3)
    up_at = time.monotonic()
    srv2 = socket.create_server(("127.0.0.1", port))
    stop2 = threading.Event()
    threading.Thread(target=serve, args=(srv2, stop2), daemon=True).start()
    t.join(10)
    stop2.set()
    srv2.close()
    assert 40 < len(result) <= 76  # paced: about 1.5 s / 20 ms
    bad = failures(result)
    assert bad and all("refused" in s[3].lower() or "reset" in s[3].lower() for s in bad)
    assert down_at - 0.1 <= bad[0][0] and bad[-1][0] <= up_at + 0.1
    assert 150 <= outage(result) <= 450
