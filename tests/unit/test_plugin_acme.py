"""check_anycastlb_acme: the serial every LB node serves (real TLS listeners on loopback) and the
issuer's renewal report."""
from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Iterator

import pytest

from anycastlb.certs import cert_info
from anycastlb.lab.pki import LabCA
from anycastlb.plugins import check_anycastlb_acme as acme

NAME = "www.example.org"


@pytest.fixture(scope="module")
def leaves(tmp_path_factory: pytest.TempPathFactory) -> list:
    ca = LabCA(tmp_path_factory.mktemp("ca"))
    return [ca.issue([NAME], days=3), ca.issue([NAME], days=3)]


class TlsListener:
    """A loopback TLS server that hands every client ``bundle``'s certificate, until closed."""

    def __init__(self, bundle_path: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(bundle_path)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listeners(leaves: list, tmp_path: Path) -> Iterator[list[TlsListener]]:
    out = []
    for i, leaf in enumerate([leaves[0], leaves[0], leaves[1]]):
        path = tmp_path / f"b{i}.pem"
        path.write_text(leaf.bundle)
        out.append(TlsListener(path))
    yield out
    for listener in out:
        listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serial_read_from_der_is_the_one_openssl_prints(leaves: list) -> None:
    for leaf in leaves:
        assert acme.der_serial(ssl.PEM_cert_to_DER_cert(leaf.cert)) == cert_info(leaf.cert).serial
    with pytest.raises(ValueError):
        acme.der_serial(b"\x02\x01\x05")


@pytest.mark.parametrize("serial", [1, 0x80, 0x0100, 0x80FF00, 2**159 - 1])
def test_small_and_high_bit_serials_read_as_openssl_prints_them(serial: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert acme.der_serial(cert.public_bytes(serialization.Encoding.DER)) == cert_info(pem).serial


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = acme.main(argv)
    return code, capsys.readouterr().out.strip()


def test_nodes_serving_the_same_certificate_are_ok(listeners: list[TlsListener], leaves: list,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # one port per node: the listeners stand for lb1 and lb2 on 127.0.0.1 (the probe port differs here)
    served = [acme.fetch_serial(f"lb{i + 1}", "127.0.0.1", x.port, NAME, 5) for i, x in enumerate(listeners[:2])]
    code, text = acme.serial_verdict(NAME, served)
    assert code == acme.OK, text
    assert text == f"{NAME}: lb1, lb2 serve serial {cert_info(leaves[0].cert).serial}"


def test_a_node_serving_another_certificate_is_a_warning(listeners: list[TlsListener], leaves: list,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    served = [acme.fetch_serial(f"lb{i + 1}", "127.0.0.1", x.port, NAME, 5) for i, x in enumerate(listeners)]
    code, text = acme.serial_verdict(NAME, served)
    assert code == acme.WARNING
    assert f"lb1, lb2 serve serial {cert_info(leaves[0].cert).serial}" in text
    assert f"lb3 serves serial {cert_info(leaves[1].cert).serial}" in text and "2 different" in text


def test_a_silent_node_is_a_warning_and_no_answer_at_all_is_critical(listeners: list[TlsListener],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    closed = free_port()
    code, text = run(["serial", "--name", NAME, "-p", str(listeners[0].port), "-t", "2",
                      "--node", "lb1=127.0.0.1", "--node", "lb9=127.0.0.9"], capsys)
    # lb9 at 127.0.0.9 has no listener on that port: refused
    assert code == acme.WARNING and text.startswith("WARNING - ") and "lb9: ConnectionRefusedError" in text, text
    code, text = run(["serial", "--name", NAME, "-p", str(closed), "-t", "2", "--node", "lb1=127.0.0.1"], capsys)
    assert code == acme.CRITICAL and text.startswith(f"CRITICAL - no node serves {NAME}: lb1 "), text


NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


def test_the_renewal_report_keeps_each_certificates_latest_outcome(tmp_path: Path) -> None:
    path = str(tmp_path / "lib" / "acme-renewal.json")
    acme.write_report([{"name": "acme-www", "result": "issued", "reason": "forced", "serial": "0A",
                        "not_after": "2031-11-30T12:00Z"},
                       {"name": "acme-api", "result": "kept", "reason": "not due", "serial": "0B",
                        "not_after": "2031-11-30T12:00Z"}], "master", path, at=NOW - dt.timedelta(hours=2))
    report = acme.write_report([{"name": "acme-www", "result": "failed", "reason": "forced; CA said no; the old "
                                 "certificate stays"}], "master", path, at=NOW)
    assert oct(Path(path).stat().st_mode & 0o777) == "0o644"
    assert json.loads(Path(path).read_text()) == report
    assert report["certificates"]["acme-api"]["at"] == "2026-12-01T10:00:00Z"
    assert report["certificates"]["acme-www"]["result"] == "failed"
    code, text = acme.renewal_verdict(report, "acme-www", 25 * 3600, NOW)
    assert code == acme.WARNING and text == ("acme-www: the renewal 0 s ago failed, the old certificate stays: "
                                             "forced; CA said no; the old certificate stays")
    code, text = acme.renewal_verdict(report, "acme-api", 25 * 3600, NOW)
    assert code == acme.OK and text == ("acme-api: kept 2.0 h ago (not due), serial 0B, valid until "
                                        "2031-11-30T12:00Z")
    code, text = acme.renewal_verdict(report, "acme-api", 3600, NOW)
    assert code == acme.WARNING and "ran 2.0 h ago" in text and "schedule" in text
    code, text = acme.renewal_verdict(None, "acme-www", 3600, NOW)
    assert code == acme.WARNING and "no renewal pass has reported" in text


def test_the_renewal_command_reads_the_report_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    code, text = run(["renewal", "--certificate", "acme-www", "--report", str(path)], capsys)
    assert code == acme.WARNING and "no renewal pass" in text
    acme.write_report([{"name": "acme-www", "result": "issued", "reason": "no certificate yet", "serial": "0A",
                        "not_after": "x"}], "master", str(path))
    code, text = run(["renewal", "--certificate", "acme-www", "--report", str(path)], capsys)
    assert code == acme.OK and text.startswith("OK - acme-www: issued "), text
    path.write_text("{")
    code, text = run(["renewal", "--certificate", "acme-www", "--report", str(path)], capsys)
    assert code == acme.UNKNOWN
