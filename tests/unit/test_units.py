"""systemd mode: the unit anycastlb ships, the paths of Debian's units, healthd refusing wrong paths."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from anycastlb import paths, units
from anycastlb.compiler import compile_catalog
from anycastlb.render import healthd as healthd_render


@pytest.fixture(scope="module")
def fleet(campus_catalog: Path) -> dict[str, dict[str, Any]]:
    return compile_catalog(campus_catalog).nodes


def test_healthd_json_names_the_paths_of_the_init_mode(fleet: dict[str, Any]) -> None:
    for mode, want in (("systemd", paths.SYSTEMD), ("direct", paths.DIRECT)):
        doc = healthd_render.config({**fleet["lb1"], "service_mode": mode})
        watches = [a["watch"] for a in doc["announcements"] if a["watch"]["type"] == "haproxy"]
        assert watches and {(w["pidfile"], w["stats_socket"]) for w in watches} == {
            (want.haproxy_pidfile, want.haproxy_admin_socket)}
    assert paths.SYSTEMD.haproxy_pidfile == "/run/haproxy.pid"  # Debian's haproxy.service: -p /run/haproxy.pid


def test_debian_haproxy_unit_matches_the_systemd_paths() -> None:
    unit = Path("/lib/systemd/system/haproxy.service")
    if not unit.exists():
        pytest.skip("haproxy is not installed")
    text = unit.read_text()
    assert f"PIDFILE={paths.SYSTEMD.haproxy_pidfile}" in text
    assert f"-S {paths.SYSTEMD.haproxy_master_socket}" in text


def test_the_healthd_unit_and_what_a_node_enables(fleet: dict[str, Any]) -> None:
    files = units.unit_files(fleet["lb1"], python="/opt/aclb/bin/python")
    text = files["/etc/systemd/system/anycastlb-healthd.service"]
    assert "ExecStart=/opt/aclb/bin/python -m anycastlb.healthd_main --config /etc/anycastlb/healthd.json" in text
    assert "After=network-online.target nftables.service haproxy.service" in text
    assert "WantedBy=multi-user.target" in text and "Restart=always" in text
    # a clean stop (shutdown) lingers a second after the withdrawal, before HAProxy is stopped
    assert """ExecStopPost=/bin/sh -c '[ "$$SERVICE_RESULT" != success ] || sleep 1'""" in text
    assert units.enabled_units(fleet["lb1"]) == ["nftables.service", "haproxy.service",
                                                 "anycastlb-healthd.service", "bird.service"]
    assert units.unit_files(fleet["rr1"]) == {}  # no speaker, no healthd
    assert "anycastlb-healthd.service" not in units.enabled_units(fleet["rr1"])


def test_healthd_refuses_to_start_when_the_haproxy_paths_do_not_exist(fleet: dict[str, Any], tmp_path: Path) -> None:
    doc = healthd_render.config({**fleet["lb1"], "service_mode": "systemd"}, root=str(tmp_path))
    cfg = tmp_path / "healthd.json"
    cfg.write_text(json.dumps(doc))
    r = subprocess.run([sys.executable, "-m", "anycastlb.healthd_main", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"refusing to start: HAProxy pidfile {tmp_path}/run/haproxy.pid" in r.stderr
    assert f"HAProxy stats socket {tmp_path}/run/haproxy/admin.sock" in r.stderr
    assert "Traceback" not in r.stderr


def test_after_a_reboot_the_announced_vips_go_back_on_lo_before_healthd_starts(fleet: dict[str, Any],
                                                                                tmp_path: Path) -> None:
    text = units.healthd_unit("/py")
    pre = "ExecStartPre=/py -m anycastlb.units vips /etc/anycastlb/healthd.json"
    assert pre in text and text.index(pre) < text.index("ExecStart=/py -m anycastlb.healthd")
    cfg = tmp_path / "healthd.json"
    cfg.write_text(json.dumps(healthd_render.config({**fleet["lb1"], "service_mode": "systemd"})))
    assert units.vip_addresses(str(cfg)) == sorted(a["prefix"] for a in fleet["lb1"]["health"]["announcements"])
    r = subprocess.run([sys.executable, "-m", "anycastlb.units", "vips", str(tmp_path / "nope.json")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "nope.json" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ check.unit


def _kdc_catalog(tmp_path: Path, campus_catalog: Path, check: str, service: str = "kdc") -> Path:
    text = campus_catalog.read_text()
    if service == "kdc":
        text = text.replace("    check: {tcp: {port: 88}}      #", f"    check: {check}      #")
    else:
        text = text.replace("  intranet:\n", f"  intranet:\n    check: {check}\n", 1)
    p = tmp_path / "campus.yaml"
    p.write_text(text)
    return p


def test_check_unit_makes_healthd_watch_the_units_main_process(tmp_path: Path, campus_catalog: Path) -> None:
    cat = _kdc_catalog(tmp_path, campus_catalog, "{tcp: {port: 88}, unit: krb5-kdc.service}")
    fleet = compile_catalog(cat).nodes
    watch = healthd_render.config(fleet["kdc1"])["announcements"][0]["watch"]
    assert (watch["type"], watch["port"], watch["unit"]) == ("tcp", 88, "krb5-kdc.service")
    from anycastlb.healthd import TcpWatch, parse_watch
    assert parse_watch("w", watch) == TcpWatch(address="192.0.2.88", port=88, interval_ms=2000, timeout_ms=1000,
                                               rise=2, fall=3, unit="krb5-kdc.service")
    assert "unit" not in healthd_render.config(compile_catalog(campus_catalog).nodes["kdc1"])[
        "announcements"][0]["watch"]


@pytest.mark.parametrize("unit", ["krb5-kdc", "kdc.socket", "../kdc.service", "k dc.service", "kdc.service\n",
                                  "-kdc.service", "kdc@.service", "kdc;reboot.service", "k\\x2dd.service"])
def test_check_unit_is_a_plain_service_unit_name(tmp_path: Path, campus_catalog: Path, unit: str) -> None:
    from anycastlb.errors import CatalogRefused
    cat = _kdc_catalog(tmp_path, campus_catalog, "{tcp: {port: 88}, unit: " + json.dumps(unit) + "}")
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(cat)
    errors = [str(e) for e in exc.value.errors]
    line = next(i for i, text in enumerate(cat.read_text().splitlines(), 1) if "unit:" in text)
    assert any(f"campus.yaml:{line}" in e and "kdc" in e and "unit" in e and "systemd service unit" in e
               for e in errors), errors
    from anycastlb.healthd import ConfigError, parse_watch
    with pytest.raises(ConfigError, match="systemd service unit"):
        parse_watch("w", {"type": "tcp", "address": "192.0.2.88", "port": 88, "unit": unit})


def test_check_unit_only_on_anycast_services(tmp_path: Path, campus_catalog: Path) -> None:
    from anycastlb.errors import CatalogRefused
    cat = _kdc_catalog(tmp_path, campus_catalog, "{unit: apache2.service}", service="intranet")
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(cat)
    assert any("intranet" in str(e) and "check.unit" in str(e) and "anycast" in str(e)
               for e in exc.value.errors), [str(e) for e in exc.value.errors]
