"""The generated catalog of benchmarks/scale.py compiles at the sizes it is measured at."""

from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path

import pytest
import yaml

from anycastlb.compiler import compile_catalog

SCALE = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("n", [100, 300, 1000])
def test_scale_catalog_compiles_with_n_services_on_the_campus_nodes(scale, tmp_path, n):
    path = tmp_path / "campus.yaml"
    data = scale.scale_catalog(n)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    fleet = compile_catalog(path)
    assert len(fleet.services) == n
    assert set(fleet.nodes) == set(yaml.safe_load(scale.CAMPUS.read_text())["nodes"])
    vips = [v for s in fleet.services.values() for v in s["vips"]]
    assert len(vips) == len(set(vips))
    assert all(ipaddress.ip_address(v) in ipaddress.ip_network("192.0.2.0/24")
               or ipaddress.ip_address(v) in ipaddress.ip_network("2001:db8:1::/64") for v in vips)
    anycast = [v for s in fleet.services.values() if s["mode"] == "anycast" for v in s["vips"]]
    assert len(fleet.nodes["lb1"]["bgp"]["announce"]) == len(vips) - len(anycast)
    assert len(fleet.nodes["kdc1"]["bgp"]["announce"]) == len(anycast)
    modes = {m: sum(s["mode"] == m for s in fleet.services.values()) for m in ("http", "tcp", "anycast")}
    tls = sum(s["tls"] is not None for s in fleet.services.values())
    assert all(modes.values()) and tls, (modes, tls)
    vip_ports = sum(len(s["vips"]) * len(s["ports"]) for s in fleet.services.values())
    assert 3 * n <= vip_ports <= 3.5 * n   # about 3,000 VIP:ports at 1,000 services (issue 16)
