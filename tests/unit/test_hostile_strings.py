"""Property test (issue 11, item 8): hostile text in every string of the example, at the door and at the exit.

1. The catalog: every string value and every name (mapping key) of
   ``anycastlb/examples/campus.yaml`` gets each hostile text (a newline, quotes, a
   space, ``#``, ``../``, ``;``, braces, ``$``, ``<script>``, U+2028, U+0085, NUL)
   followed by a marker. Each variant is refused by lint (every error naming file:line,
   object and key; never a traceback), or it renders without an exception, the hostile
   text appears only inert in every rendered file, and every daemon's own checker
   accepts the result.
2. The exit alone: the same texts put straight into every string of the compiled node
   models (as if the schema had let them through). Each render raises
   :class:`RenderError` (a refusal naming node, daemon and file), or the text is inert.
   A sample of those renders goes through the real checkers.

"Inert" is judged per line holding the marker, per dialect: the hostile text right
before the marker sits inside a quoted string (HAProxy and apache with their backslash
escapes, BIRD and nft without) or a comment, or was encoded away (percent-encoding,
HTML entities, JSON escapes); line breaks never start a line of their own; NUL, U+2028
and U+0085 appear in no file.

Slow: about 2,700 lint runs and 2,000 renders, and the real checkers (~1 min here, shared CPU).
"""
from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from anycastlb.apply import check_node, stage_and_check
from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.render import RenderError, confine, daemon, daemons

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(shutil.which(b) for b in ("haproxy", "bird", "apache2", "nft", "icinga2")),
                                 reason="needs every daemon's checker")]

HOSTILE = ["\n", '"', "'", " ", "#", "../", ";", "{", "}", "$", "<script>", "\u2028", "\u0085", "\x00"]
NEVER = ("\x00", "\u2028", "\u0085")
MARK = "zq9"
SECRETS = {"certificates": {"campus-wildcard": {"cert": "C", "key": "K"}}, "bgp_passwords": {}}
EXAMPLE = Path(__file__).resolve().parents[2] / "anycastlb/examples/campus.yaml"


# ------------------------------------------------------------------ inertness per dialect


def _dialect(path: str) -> str:
    if path.endswith(".html"):
        return "html"
    if path.endswith(".json"):
        return "json"
    for prefix, name in (("/etc/haproxy/haproxy.cfg", "haproxy"), ("/etc/apache2/", "apache"),
                         ("/etc/bird/", "bird"), ("/etc/nftables", "nft"), ("/etc/icinga2/", "icinga")):
        if path.startswith(prefix):
            return name
    return "data"


def _inert_spans(line: str, dialect: str) -> list[tuple[int, int]]:
    """The spans of ``line`` that a dialect reads as data: quoted strings and comments."""
    stripped = line.lstrip()
    if dialect == "apache" and stripped.startswith("#"):
        return [(0, len(line))]
    if dialect == "icinga" and stripped.startswith(("/*", "*", "//")):
        return [(0, len(line))]
    escapes = dialect in ("haproxy", "apache", "icinga")
    spans, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c == "#" and dialect in ("haproxy", "bird", "nft", "icinga"):
            spans.append((i, n))
            break
        if c == '"' or (c == "'" and dialect == "haproxy"):
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if escapes and line[j] == "\\" and c == '"' else 1
            spans.append((i, j + 1))
            i = j + 1
            continue
        i += 1
    return spans


def assert_inert(files: dict[str, str], hostile: str, where: str) -> None:
    """The hostile text (right before the marker) is data wherever it landed."""
    payload = hostile + MARK
    for path, text in files.items():
        for ch in NEVER:
            assert ch not in text, f"{where}: {path} holds U+{ord(ch):04X}"
        if MARK not in text:
            continue
        dialect = _dialect(path)
        if dialect == "json":
            json.loads(text)  # JSON is data once it parses
            continue
        for line in text.splitlines():
            if MARK not in line:
                continue
            assert not line.lstrip().startswith(MARK), f"{where}: {path}: a line break got through: {line!r}"
            if dialect == "html":
                assert not (hostile in ('"', "'", "<script>") and payload in line), f"{where}: {path}: {line!r}"
                continue
            if dialect == "data":
                continue
            spans = _inert_spans(line, dialect)
            start = line.find(payload)
            while start != -1:
                # inside a quoted string or comment opened *before* the hostile text (one it opens itself,
                # as '#' in an unquoted argument, is the injection)
                assert any(a < start and start + len(payload) <= b for a, b in spans), \
                    f"{where}: {path}: {hostile!r} outside a quoted string or comment: {line!r}"
                start = line.find(payload, start + 1)


def rendered(model: dict[str, Any]) -> dict[str, str]:
    """Every file of every daemon of the node, by ``daemon:path``; every path must stay in its tree."""
    out = {}
    for spec in daemons():
        if spec.wanted(model):
            for f in spec.render(model, SECRETS, "/"):
                confine("/nonexistent-root", f.path)
                out[f.path] = f.content
    return out


def test_the_inertness_judge_can_fail() -> None:
    """The judge itself: raw injections are caught, quoted ones pass."""
    with pytest.raises(AssertionError):
        assert_inert({"/etc/haproxy/haproxy.cfg": f"    server a\n{MARK} stats enable\n"}, "\n", "t")
    with pytest.raises(AssertionError):
        assert_inert({"/etc/haproxy/haproxy.cfg": f"    uri /a #{MARK} ver\n"}, "#", "t")
    with pytest.raises(AssertionError):
        assert_inert({"/etc/bird/bird.conf": f'    description "a";{MARK}";\n'}, ";", "t")
    with pytest.raises(AssertionError):
        assert_inert({"/var/www/x/index.html": f"<b><script>{MARK}</b>"}, "<script>", "t")
    assert_inert({"/etc/haproxy/haproxy.cfg": f'    uri "/a\\"{MARK}" ver\n'}, '"', "t")
    assert_inert({"/etc/apache2/x.conf": f'\tServerAlias "a b\\"{MARK}"\n'}, '"', "t")
    assert_inert({"/etc/haproxy/haproxy.cfg": f"# service a#{MARK}\n"}, "#", "t")


# ------------------------------------------------------------------ 1. the catalog: lint refuses, or all is inert


def _locations(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[str, tuple[Any, ...]]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield "name", path + (k,)
            yield from _locations(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _locations(v, path + (i,))
    elif isinstance(node, str):
        yield "value", path


def _variant(doc: Any, kind: str, path: tuple[Any, ...], hostile: str) -> Any:
    doc = copy.deepcopy(doc)
    *parent, last = path
    obj = doc
    for p in parent:
        obj = obj[p]
    if kind == "value":
        obj[last] = f"{obj[last]}{hostile}{MARK}"
    else:
        items = list(obj.items())
        obj.clear()
        obj.update({(f"{k}{hostile}{MARK}" if k == last else k): v for k, v in items})
    return doc


def test_every_string_and_name_of_the_example_is_refused_or_inert(tmp_path: Path) -> None:
    src = yaml.safe_load(EXAMPLE.read_text())
    baseline = {nid: rendered(m) for nid, m in compile_catalog(EXAMPLE).nodes.items()}
    locations = list(_locations(src))
    assert len(locations) > 150
    refused = accepted = 0
    failures: list[str] = []
    cat = tmp_path / "campus.yaml"
    for kind, path in locations:
        for hostile in HOSTILE:
            where = f"{kind} {'.'.join(map(str, path))} + {hostile!r}"
            cat.write_text(yaml.safe_dump(_variant(src, kind, path, hostile), allow_unicode=True))
            try:
                fleet = compile_catalog(cat)
            except CatalogRefused as exc:
                refused += 1
                # every error names the file and the object or key; the refusal names a line (an error
                # about a section the variant made disappear, e.g. a renamed 'bgp', has no line to name)
                for e in exc.errors:
                    if not (e.file == str(cat) and e.kind and (e.name or e.key)):
                        failures.append(f"{where}: refusal without file, object and key: {e}")
                if not any(e.line and (e.key or e.name) for e in exc.errors):
                    failures.append(f"{where}: no error of the refusal names file:line and an object or key: {exc.summary()}")
                continue
            accepted += 1
            for nid, model in fleet.nodes.items():
                try:
                    files = rendered(model)
                except RenderError as exc:
                    failures.append(f"{where}: lint accepted it, render refused: {exc}")
                    continue
                try:
                    assert_inert(files, hostile, f"{where} ({nid})")
                except AssertionError as exc:
                    failures.append(str(exc))
                if files != baseline.get(nid):
                    for name, (ok, out) in check_node(model, SECRETS_FOR_CHECK()).items():
                        if not ok:
                            failures.append(f"{where}: lint accepted it, {nid} {name} refused: {out[-300:]}")
    print(f"\n{len(locations)} strings and names x {len(HOSTILE)} hostile texts: "
          f"{refused} refused by lint, {accepted} accepted (rendered, inert, checked)")
    assert not failures, "\n".join(failures[:40])


def SECRETS_FOR_CHECK() -> dict[str, Any]:  # noqa: N802 - a cached value, computed once
    """A throwaway certificate the checkers accept (generated once per run)."""
    global _CHECK_SECRETS
    if _CHECK_SECRETS is None:
        from anycastlb.render_cli import throwaway_certificates
        _CHECK_SECRETS = {"certificates": throwaway_certificates(["campus-wildcard"]), "bgp_passwords": {}}
    return _CHECK_SECRETS


_CHECK_SECRETS: dict[str, Any] | None = None


# ------------------------------------------------------------------ 2. the exit alone: refused or inert


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every string of a node model (a list's first element stands for the list)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        if node:
            yield from _leaves(node[0], path + (0,))
    elif isinstance(node, str):
        yield path


@pytest.mark.parametrize("node", ["lb1", "lb3", "web1", "kdc1", "rr1", "mon1", "salt"])
def test_every_string_of_a_node_model_is_refused_or_inert_at_the_exit(node: str) -> None:
    model = compile_catalog(EXAMPLE).nodes[node]
    rng = random.Random(f"exit-{node}")  # a fixed sample, the same every run
    failures: list[str] = []
    refused = inert = checked = 0
    for path in _leaves(model):
        for hostile in HOSTILE:
            where = f"{node} model {'.'.join(map(str, path))} + {hostile!r}"
            m = copy.deepcopy(model)
            obj = m
            for p in path[:-1]:
                obj = obj[p]
            obj[path[-1]] = f"{obj[path[-1]]}{hostile}{MARK}"
            try:
                files = rendered(m)
            except RenderError as exc:
                refused += 1
                if not (exc.node == m["node"] and exc.daemon):
                    failures.append(f"{where}: a refusal must name node and daemon: {exc}")
                continue
            except Exception as exc:  # pylint: disable=broad-except  # the defect this test exists to find
                failures.append(f"{where}: {type(exc).__name__} instead of RenderError: {exc}")
                continue
            try:
                assert_inert(files, hostile, where)
                inert += 1
            except AssertionError as exc:
                failures.append(str(exc))
                continue
            if rng.random() < 0.04:  # a sample through the real checkers
                checked += 1
                for spec in daemons():
                    if spec.wanted(m):
                        ok, out = stage_and_check(daemon(spec.name), m, SECRETS_FOR_CHECK(),
                                                  "/" if spec.tree else "/nonexistent-root")
                        if not ok:
                            failures.append(f"{where}: rendered but {spec.name} refused: {out[-300:]}")
    print(f"\n{node}: {refused} refused at the exit, {inert} inert ({checked} through the checkers)")
    assert not failures, "\n".join(failures[:40])
