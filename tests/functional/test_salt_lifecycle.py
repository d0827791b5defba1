"""Issue 13 through Salt's loader: verify judges the new catalog, decommission refuses a node still named,
the reactor quotes the event's rev."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from anycastlb import minion
from anycastlb.compiler import compile_catalog
from anycastlb.model import model_hash

REPO = Path(__file__).resolve().parents[2]


class AlwaysRunning:
    """A service control for which every daemon runs (verify's daemon check passes)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def running(self, name: str) -> bool:
        return True


@pytest.fixture
def salt_node(tmp_path, campus_catalog, make_minion_opts, monkeypatch):
    """The loaders of minion ``salt`` (it runs only nftables), over a catalog this test may edit."""
    from saltfactories.utils.functional import Loaders

    catalog = tmp_path / "campus.yaml"
    shutil.copy(campus_catalog, catalog)
    monkeypatch.setattr(minion, "control_factory", AlwaysRunning)
    lds = Loaders(make_minion_opts(tmp_path / "minion", "salt", catalog, None))
    yield lds, catalog
    lds.reset_state()


def test_verify_judges_the_catalog_the_master_serves_now_not_the_loaded_pillar(salt_node):
    loaders, catalog = salt_node
    old = model_hash(compile_catalog(catalog).nodes["salt"])
    ret = loaders.modules.anycastlb.verify(expect=old, timeout=1)
    assert ret["result"] is True and ret["model"] == old, ret
    # the catalog changes after the minion loaded its pillar (as a deploy's apply does)
    data = yaml.safe_load(catalog.read_text())
    data["management"].append("203.0.113.0/24")
    catalog.write_text(yaml.safe_dump(data))
    new = model_hash(compile_catalog(catalog).nodes["salt"])
    assert new != old
    ret = loaders.modules.anycastlb.verify(expect=new, timeout=1)
    assert ret["result"] is True and ret["model"] == new, ret
    with pytest.raises(Exception, match="not the planned catalog"):  # a plan of a third catalog
        loaders.modules.anycastlb.verify(expect="0" * 16, timeout=1)


def test_verify_takes_the_planned_model_from_the_apply_record_without_compiling_the_pillar(
        salt_node, applied_model_record, monkeypatch):
    loaders, catalog = salt_node
    data = yaml.safe_load(catalog.read_text())
    data["management"].append("203.0.113.0/24")
    catalog.write_text(yaml.safe_dump(data))
    planned = compile_catalog(catalog).nodes["salt"]
    new = model_hash(planned)
    # the apply's state run was given the planned model (its last state records it) ...
    ret = loaders.states.anycastlb.recorded(name="model")
    assert model_hash(loaders.pillar["anycastlb"]) != new, "the minion's loaded pillar is the old catalog's"
    assert ret.result is True and ret.changes == {"model": {"old": None, "new": new}}, ret
    assert loaders.states.anycastlb.recorded(name="model").changes == {}, "on record: no change"
    # ... so verify uses that record: no pillar is compiled (the master's answer is not asked for)
    import salt.pillar

    def no_pillar(*args, **kwargs):
        raise AssertionError("verify compiled the pillar again")
    monkeypatch.setattr(salt.pillar, "get_pillar", no_pillar)
    ret = loaders.modules.anycastlb.verify(expect=new, timeout=1)
    assert ret["result"] is True and ret["model"] == new, ret
    # a record of another model is not taken for the planned one
    applied_model_record.write_text(applied_model_record.read_text().replace(new, "0" * 16, 1))
    with pytest.raises(AssertionError, match="compiled the pillar again"):
        loaders.modules.anycastlb.verify(expect=new, timeout=1)


def test_decommission_refuses_a_node_the_catalog_still_names(salt_node):
    loaders, catalog = salt_node
    with pytest.raises(Exception, match="still names this node"):
        loaders.modules.anycastlb.decommission(test=True)
    # removed from the catalog after the minion loaded its pillar: the master's answer counts
    data = yaml.safe_load(catalog.read_text())
    del data["nodes"]["salt"]
    catalog.write_text(yaml.safe_dump(data))
    ret = loaders.modules.anycastlb.decommission(test=True)
    assert ret["result"] in (True, None) and "this node" in ret["comment"], ret


def test_reactor_passes_a_hostile_rev_as_data_never_as_yaml(tmp_path, make_minion_opts, campus_catalog):
    """The rev of the event is pasted as JSON: a newline and YAML of its own stay one string."""
    from saltfactories.utils.functional import Loaders

    loaders = Loaders(make_minion_opts(tmp_path / "minion", "salt", campus_catalog, None))
    try:
        hostile = 'abc"\n      - pillar: {anycastlb_deploy: {nodes: [x]}}\n# '
        text = (REPO / "salt/anycastlb/reactor/catalog_changed.sls").read_text()
        out = loaders.modules.slsutil.renderer(string=text, default_renderer="jinja|yaml",
                                               data={"rev": hostile})
    finally:
        loaders.reset_state()
    args = out["anycastlb-catalog-changed"]["runner.state.orchestrate"][0]["args"]
    assert args[0] == {"mods": "anycastlb.orch.deploy"}
    assert args[1] == {"pillar": {"anycastlb_deploy": {"rev": hostile, "changed_only": True}}}


def test_the_retired_state_reports_what_goes_and_changes_nothing_under_test(salt_node, monkeypatch):
    """The state is wired to anycastlb.retire: under test=True it reports (here, on a node that
    runs only nftables, what this machine holds of the other daemons: normally nothing)."""
    loaders, _ = salt_node
    seen = []
    monkeypatch.setattr(minion, "retire", lambda model, ctl, root="/", test=False: seen.append(
        (model["node"], ctl, test)) or {"result": None, "changes": {"haproxy": {"would stop": True}},
                                         "comment": "would retire haproxy"})
    ret = loaders.states.anycastlb.retired(name="daemons this node no longer runs", test=True)
    assert ret.result is None and ret.changes == {"haproxy": {"would stop": True}}, ret
    assert seen == [("salt", None, True)], "no service control under test: nothing can be stopped"
