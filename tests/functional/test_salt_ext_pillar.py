"""The ext_pillar, called the way a master calls it, and through a masterless minion's loader."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from anycastlb.errors import CatalogRefused
from anycastlb.pillar import CACHE, FleetCache, _scan_nodes, node_pillar

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


def test_broken_catalog_fails_its_own_nodes_with_every_message(ext_pillar, tmp_path, campus_catalog):
    bad = tmp_path / "campus.yaml"
    text = campus_catalog.read_text()
    text = text.replace("    balance: leastconn\n", "    balance: leastconn\n    balanse: roundrobin\n")
    text = text.replace("    vip: 192.0.2.20\n", "    vip: 203.0.113.20\n")
    bad.write_text(text)
    for minion in ("lb1", "web1", "salt"):
        with pytest.raises(CatalogRefused) as exc:
            ext_pillar(minion, {}, catalog=str(bad))
        msg = str(exc.value)
        assert f"{bad}:" in msg
        assert "service 'intranet', key 'balanse': unknown key 'balanse'" in msg
        assert "service 'imap', key 'vip[0]': VIP 203.0.113.20 is outside vip_pools" in msg
    # a minion of the same master that the catalog does not name keeps its pillar working
    assert ext_pillar("printserver42", {}, catalog=str(bad)) == {}


def test_refusal_is_reported_once_for_the_other_minions(tmp_path, campus_catalog):
    bad = tmp_path / "campus.yaml"
    bad.write_text(campus_catalog.read_text() + "\nbogus_section: 1\n")
    reports: list[str] = []
    cache = FleetCache()
    for minion in ("printserver42", "mail1", "printserver42"):
        assert node_pillar(minion, str(bad), cache=cache, report=reports.append) == {}
    assert len(reports) == 1 and f"{bad}:" in reports[0] and "bogus_section" in reports[0]


def test_catalog_that_is_not_yaml_still_fails_only_its_nodes(tmp_path, campus_catalog):
    """A YAML syntax error: the node names are read line by line from the broken file."""
    bad = tmp_path / "campus.yaml"
    text = campus_catalog.read_text()
    assert "  lb2:  {address: 198.51.100.22," in text
    bad.write_text(text.replace("  lb2:  {address: 198.51.100.22,", "  lb2:  {address: [198.51.100.22,"))
    cache = FleetCache()
    for minion in ("lb1", "lb2", "salt", "mon1", "web2"):
        with pytest.raises(CatalogRefused) as exc:
            node_pillar(minion, str(bad), cache=cache)
        assert f"{bad}:" in str(exc.value) and "not valid YAML" in str(exc.value)
    assert node_pillar("printserver42", str(bad), cache=cache) == {}
    assert node_pillar("address", str(bad), cache=cache) == {}  # a nested key is no node


def test_catalog_nodes_of_a_directory_and_of_the_last_good_compilation(tmp_path, campus_catalog):
    d = tmp_path / "catalog"
    d.mkdir()
    shutil.copy(campus_catalog, d / "campus.yaml")
    (d / "more.yaml").write_text("nodes:\n  lb9: {address: 198.51.100.29}\n"
                                 "clusters:\n  edge2: {nodes: [lb9]}\n")
    cache = FleetCache()
    assert node_pillar("lb9", str(d), cache=cache)["anycastlb"]["node"] == "lb9"
    # lb9 is renamed and the catalog broken in the same edit: lb9 (last good) and lb10 both fail
    (d / "more.yaml").write_text("nodes:\n  lb10: {address: 198.51.100.29, bogus: 1}\n")
    for minion in ("lb9", "lb10", "lb1"):
        with pytest.raises(CatalogRefused, match="bogus"):
            node_pillar(minion, str(d), cache=cache)
    assert node_pillar("printserver42", str(d), cache=cache) == {}


def test_scan_of_unparsable_yaml_reads_only_the_keys_under_nodes():
    text = ("bgp: {asn: 1\nnodes:   # the fleet\n  a: {address: 1}\n  'b c': x\n  \"d\":\n"
            "    address: 2\n  # e: commented out\n\n  f :\nclusters:\n  edge: {nodes: [a]}\n")
    assert _scan_nodes(text) == {"a", "b c", "d", "f"}


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


def test_each_slice_is_a_private_copy(tmp_path, campus_catalog):
    """Salt may change the pillar it is handed: the cached fleet must not change with it."""
    cache = FleetCache()
    first = node_pillar("lb1", str(campus_catalog), cache=cache)["anycastlb"]
    first["haproxy"]["frontends"].clear()
    first["address"] = "203.0.113.99"
    again = node_pillar("lb1", str(campus_catalog), cache=cache)["anycastlb"]
    assert again["haproxy"]["frontends"] and again["address"] == "198.51.100.21"
    assert again == node_pillar("lb1", str(campus_catalog), cache=FleetCache())["anycastlb"]


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
