"""A minion's pillar slice is an exact private copy of its compiled model (the campus example and
the 1,000-service catalog of benchmarks/scale.py)."""

from __future__ import annotations

import enum
import gc
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from anycastlb.pillar import FleetCache, node_pillar

SCALE = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory, campus_catalog: Path) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    scaled = tmp_path_factory.mktemp("scale") / "campus.yaml"
    scaled.write_text(yaml.safe_dump(mod.scale_catalog(1000), sort_keys=False))
    return {"campus": campus_catalog, "1000 services": scaled}


def containers(tree: Any) -> tuple[list[int], set[int]]:
    """Which dicts and lists of ``tree`` are one object (first-seen index of each, depth first),
    and their ids."""
    seen: dict[int, int] = {}
    order: list[int] = []

    def walk(o: Any) -> None:
        if isinstance(o, (dict, list, tuple, set)):
            first = id(o) not in seen
            order.append(seen.setdefault(id(o), len(seen)))
            if first:
                for v in (o.values() if isinstance(o, dict) else o):
                    walk(v)
    walk(tree)
    return order, set(seen)


@pytest.mark.parametrize("which", ["campus", "1000 services"])
def test_slice_is_the_model_copied_exactly(catalogs, which):
    cat = str(catalogs[which])
    cache = FleetCache()
    fleet = cache.get(cat).fleet
    assert fleet is not None
    for node in fleet.nodes:
        model = fleet.nodes[node]
        for _ in range(2):  # the first slice serialises the model, the next ones only copy it
            got = node_pillar(node, cat, cache=cache)["anycastlb"]
            assert list(got) == list(model)
            for key in model:
                if key != "secrets":  # the names become this node's values (test_secrets.py)
                    # repr: the same values, types and key order; containers: the same sharing
                    assert repr(got[key]) == repr(model[key]), (node, key)
                    shape, ids = containers(got[key])
                    model_shape, model_ids = containers(model[key])
                    assert shape == model_shape, (node, key)
                    assert not ids & model_ids, (node, key)  # nothing shared with the cached model


class Colour(enum.Enum):
    BLUE = "blue"


def test_a_model_with_a_type_marshal_refuses_is_copied_too(campus_catalog):
    cache = FleetCache()
    fleet = cache.get(str(campus_catalog)).fleet
    assert fleet is not None
    fleet.nodes["rr1"]["extra"] = [Colour.BLUE, {"k": Colour.BLUE}]
    got = node_pillar("rr1", str(campus_catalog), cache=cache)["anycastlb"]
    assert got["extra"] == [Colour.BLUE, {"k": Colour.BLUE}]
    assert got["extra"] is not fleet.nodes["rr1"]["extra"]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_left_as_it_was(campus_catalog, enabled):
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assert node_pillar("lb1", str(campus_catalog), cache=FleetCache())
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
