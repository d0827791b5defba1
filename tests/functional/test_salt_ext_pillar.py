"""The ext_pillar, called the way a master calls it, and through a masterless minion's loader."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from anycastlb.errors import CatalogRefused
from anycastlb.pillar import CACHE, FleetCache, node_pillar

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ext_pillar():
    """The module's ext_pillar function (imported as a plain module: it is a thin adapter)."""
    spec = importlib.util.spec_from_file_location("aclb_ext_pillar", REPO / "_pillar" / "anycastlb_mod.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.__virtual__() == "anycastlb"
    return mod.ext_pillar


def test_each_minion_gets_its_own_slice(ext_pillar, campus_catalog, campus_secrets):
    lb1 = ext_pillar("lb1", {}, catalog=str(campus_catalog), secrets=str(campus_secrets))
    web1 = ext_pillar("web1", {}, catalog=str(campus_catalog), secrets=str(campus_secrets))
    assert list(lb1) == ["anycastlb"] and list(web1) == ["anycastlb"]
    assert lb1["anycastlb"]["node"] == "lb1" and web1["anycastlb"]["node"] == "web1"
    assert "haproxy" in lb1["anycastlb"]["roles"] and lb1["anycastlb"]["haproxy"] is not None
    assert web1["anycastlb"]["haproxy"] is None and web1["anycastlb"]["apache"] is not None
    assert lb1["anycastlb"]["address"] == "198.51.100.21"


def test_secrets_are_sliced(ext_pillar, campus_catalog, campus_secrets):
    for lb in ("lb1", "lb2", "lb3"):
        sec = ext_pillar(lb, {}, catalog=str(campus_catalog), secrets=str(campus_secrets))["anycastlb"]["secrets"]
        assert list(sec["certificates"]) == ["campus-wildcard"]
        assert "BEGIN CERTIFICATE" in sec["certificates"]["campus-wildcard"]["cert"]
        assert "PRIVATE KEY" in sec["certificates"]["campus-wildcard"]["key"]
        assert sec["bgp_passwords"] == {}  # the store's unused password goes to nobody
    for other in ("web1", "kdc1", "rr1"):
        sec = ext_pillar(other, {}, catalog=str(campus_catalog), secrets=str(campus_secrets))["anycastlb"]["secrets"]
        assert sec == {"certificates": {}, "bgp_passwords": {}}


def test_unknown_minion_gets_nothing(ext_pillar, campus_catalog):
    assert ext_pillar("intruder", {}, catalog=str(campus_catalog)) == {}


def test_service_mode_is_passed_on_and_checked(ext_pillar, campus_catalog):
    assert ext_pillar("lb1", {}, catalog=str(campus_catalog), service_mode="direct")["anycastlb"][
        "service_mode"] == "direct"
    assert "service_mode" not in ext_pillar("lb1", {}, catalog=str(campus_catalog))["anycastlb"]
    with pytest.raises(CatalogRefused, match="service_mode 'upstart'"):
        ext_pillar("lb1", {}, catalog=str(campus_catalog), service_mode="upstart")


def test_broken_catalog_fails_every_minion_with_every_message(ext_pillar, tmp_path, campus_catalog):
    bad = tmp_path / "campus.yaml"
    text = campus_catalog.read_text()
    text = text.replace("    balance: leastconn\n", "    balance: leastconn\n    balanse: roundrobin\n")
    text = text.replace("    vip: 192.0.2.20\n", "    vip: 203.0.113.20\n")
    bad.write_text(text)
    for minion in ("lb1", "web1", "intruder"):
        with pytest.raises(CatalogRefused) as exc:
            ext_pillar(minion, {}, catalog=str(bad))
        msg = str(exc.value)
        assert f"{bad}:" in msg
        assert "service 'intranet', key 'balanse': unknown key 'balanse'" in msg
        assert "service 'imap', key 'vip[0]': VIP 203.0.113.20 is outside vip_pools" in msg


def test_missing_certificate_is_refused_at_deploy_time(ext_pillar, campus_catalog, tmp_path):
    empty = tmp_path / "secrets.yaml"
    empty.write_text("certificates: {}\n")
    with pytest.raises(CatalogRefused, match="campus-wildcard"):
        ext_pillar("web1", {}, catalog=str(campus_catalog), secrets=str(empty))


def test_compiled_once_per_change_of_the_files(tmp_path, campus_catalog):
    cache = FleetCache()
    cat = tmp_path / "campus.yaml"
    shutil.copy(campus_catalog, cat)
    for minion in ("lb1", "lb2", "web1", "kdc1", "nobody") * 20:
        node_pillar(minion, str(cat), cache=cache)
    assert cache.compilations == 1
    cat.write_text(cat.read_text().replace("balance: leastconn", "balance: roundrobin"))
    model = node_pillar("lb1", str(cat), cache=cache)["anycastlb"]
    assert cache.compilations == 2
    assert "leastconn" not in repr(model["haproxy"])
    # a refusal is cached too: 500 minions asking about a broken catalog cost one compilation
    cat.write_text(cat.read_text() + "\nbogus_section: 1\n")
    for _ in range(5):
        with pytest.raises(CatalogRefused):
            node_pillar("lb1", str(cat), cache=cache)
    assert cache.compilations == 3


def test_catalog_directory_notices_a_new_file(tmp_path, campus_catalog):
    cache = FleetCache()
    d = tmp_path / "catalog"
    d.mkdir()
    shutil.copy(campus_catalog, d / "campus.yaml")
    assert node_pillar("lb9", str(d), cache=cache) == {}
    (d / "more.yaml").write_text("nodes:\n  lb9: {address: 198.51.100.29}\n"
                                 "clusters:\n  edge2: {nodes: [lb9]}\n")
    assert node_pillar("lb9", str(d), cache=cache)["anycastlb"]["node"] == "lb9"
    assert cache.compilations == 2


def test_pillar_through_the_salt_loader(tmp_path, catalog_copy, campus_secrets, make_minion_opts):
    """A masterless minion compiles the same pillar through Salt's own pillar machinery."""
    from saltfactories.utils.functional import Loaders

    CACHE.clear()
    loaders = Loaders(make_minion_opts(tmp_path, "lb1", catalog_copy, campus_secrets))
    try:
        pillar = loaders.pillar
        assert "_errors" not in pillar
        assert pillar["anycastlb"]["node"] == "lb1"
        assert list(pillar["anycastlb"]["secrets"]["certificates"]) == ["campus-wildcard"]
        assert loaders.modules.anycastlb.daemons() == loaders.modules.anycastlb.daemons()
    finally:
        loaders.reset_state()


def test_broken_catalog_becomes_a_pillar_error(tmp_path, campus_catalog, make_minion_opts):
    bad = tmp_path / "bad.yaml"
    bad.write_text(campus_catalog.read_text().replace("    cluster: edge\n    backends: [web1, web2]",
                                                      "    cluster: edgy\n    backends: [web1, web2]"))
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(make_minion_opts(tmp_path, "web1", bad, None))
    try:
        pillar = loaders.pillar
        errors = "\n".join(pillar["_errors"])
        assert "Failed to load ext_pillar anycastlb" in errors
        assert f"{bad}:" in errors and "service 'www', key 'cluster'" in errors
        assert "anycastlb" not in pillar
        # Salt refuses to run states on a minion whose pillar has errors
        ret = loaders.modules.state.apply()
        assert ret.raw[0] == "Pillar failed to render with the following messages:"
        assert "service 'www', key 'cluster'" in "\n".join(ret.raw)
    finally:
        loaders.reset_state()
