"""The compiled node model matches its declared types (anycastlb.model) on the example catalog."""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

from anycastlb.compiler import compile_catalog
from anycastlb.model import NodeModel


def _is_typeddict(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, dict) and hasattr(t, "__annotations__") and hasattr(t, "__total__")


def conforms(value: Any, t: Any, where: str) -> list[str]:
    """Every way ``value`` differs from the type ``t`` (TypedDicts key by key, lists item by item)."""
    if t is Any:
        return []
    if _is_typeddict(t):
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not a mapping"]
        hints = get_type_hints(t)
        out = [f"{where}: key {k!r} not declared" for k in value if k not in hints]
        out += [f"{where}: key {k!r} missing" for k in hints if k not in value]
        for k, h in hints.items():
            if k in value:
                out += conforms(value[k], h, f"{where}.{k}")
        return out
    origin = get_origin(t)
    if origin in (typing.Union, types.UnionType):
        options = [conforms(value, a, where) for a in get_args(t)]
        return [] if any(not o for o in options) else min(options, key=len)
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__}, not a list"]
        (item,) = get_args(t)
        return [e for i, v in enumerate(value) for e in conforms(v, item, f"{where}[{i}]")]
    if origin is dict:
        return [] if isinstance(value, dict) else [f"{where}: {type(value).__name__}, not a mapping"]
    if t is type(None):
        return [] if value is None else [f"{where}: {value!r}, not None"]
    if t is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{where}: {value!r}, not int"]
    return [] if isinstance(value, t) else [f"{where}: {value!r}, not {t.__name__}"]


def test_every_node_of_the_example_conforms(campus_catalog) -> None:
    fleet = compile_catalog(campus_catalog)
    problems = [p for n, m in fleet.nodes.items() for p in conforms(m, NodeModel, n)]
    assert problems == [], "the compiled model and anycastlb/model.py disagree (declare a new key there)"


def test_the_check_sees_a_wrong_key() -> None:
    """The conformance check itself can fail."""
    fleet = compile_catalog(__import__("pathlib").Path(__file__).resolve().parents[2]
                            / "anycastlb" / "examples" / "campus.yaml")
    model = dict(fleet.nodes["lb1"])
    model["extra"] = 1
    model["address"] = 5
    assert conforms(model, NodeModel, "lb1") == ["lb1: key 'extra' not declared", "lb1.address: 5, not str"]
