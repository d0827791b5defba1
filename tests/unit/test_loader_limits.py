"""Issue 11 item 5: hostile files are refused with a clear error before anything is built from them,
by lint and by the ext_pillar (the same loader)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anycastlb import loader
from anycastlb.compiler import MAX_EXTENDS, compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.pillar import FleetCache, node_pillar

ROOT = Path(__file__).resolve().parents[2]
CAMPUS_TEXT = (ROOT / "anycastlb" / "examples" / "campus.yaml").read_text()


def laughs(levels: int = 12) -> str:
    """A billion-laughs document: 9**levels values once expanded, a few hundred bytes written."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def errors_of(path: Path) -> list[str]:
    with pytest.raises(CatalogRefused) as exc:
        compile_catalog(path)
    return [str(e) for e in exc.value.errors]


def test_alias_bomb_refused_naming_file_and_line(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text("bgp: {asn: 64512}\n" + laughs())
    (err,) = errors_of(p)
    assert err.startswith(f"{p}:") and "aliases are expanded" in err
    line = int(err.split(":")[1])
    assert 2 <= line <= 13


def test_merge_key_bomb_refused(tmp_path):
    lines = ["a0: &a0 {x: 1, y: 2, z: 3}"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)] + ["b: {<<: *a9}"]
    p = tmp_path / "merge.yaml"
    p.write_text("\n".join(lines) + "\n")
    assert any("aliases are expanded" in e for e in errors_of(p))


@pytest.mark.parametrize("text,words", [
    ("? [a, b]\n: 1\n", "mapping key must be a plain value"),
    ("x: &x {a: 1}\n*x : 3\n", "mapping key must be a plain value"),
    ("a: " + "[" * 40 + "]" * 40 + "\n", "nest deeper than 32"),
])
def test_complex_keys_and_deep_nesting_refused(tmp_path, text, words):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    (err,) = errors_of(p)
    assert err.startswith(f"{p}:") and words in err


def test_big_file_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 1024)
    p = tmp_path / "big.yaml"
    p.write_text("# " + "x" * 2000 + "\n" + CAMPUS_TEXT)
    (err,) = errors_of(p)
    assert err.startswith(str(p)) and "larger than" in err


def test_plain_aliases_still_work(tmp_path):
    text = CAMPUS_TEXT.replace("monitor: {notify: [netops]}", "monitor: &mon {notify: [netops]}", 1)
    text = text.replace("    backends: [kdc1, kdc2]", "    backends: [kdc1, kdc2]\n    monitor: *mon", 1)
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert compile_catalog(p).summary["services"] == 4


def test_extends_chain_bounded(tmp_path):
    chain = "\n".join([f"  t{i}: {{extends: t{i - 1}}}" for i in range(1, 40)])
    text = CAMPUS_TEXT.replace("templates:                        # abstract services, used only through 'extends'",
                               "templates:\n  t0: {mode: http}\n" + chain, 1)
    p = tmp_path / "c.yaml"
    p.write_text(text)
    errs = errors_of(p)
    deep = [e for e in errs if f"deeper than {MAX_EXTENDS} templates" in e]
    assert deep and all("key 'extends'" in e and e.startswith(f"{p}:") for e in deep)
    assert not any("template 't5'" in e for e in errs)


def test_lint_refuses_a_bomb_with_a_message(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(CAMPUS_TEXT + laughs())
    r = subprocess.run([sys.executable, "-m", "anycastlb.cli", "lint", str(p)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "aliases are expanded" in r.stderr and r.stderr.startswith(f"error: {p}:")


def test_ext_pillar_refuses_a_bomb(tmp_path):
    """The function the ext_pillar calls: the catalog's own node gets the refusal, others {} and a report."""
    p = tmp_path / "bomb.yaml"
    p.write_text(CAMPUS_TEXT + laughs())
    reports: list[str] = []
    with pytest.raises(CatalogRefused) as exc:
        node_pillar("lb1", str(p), cache=FleetCache(), report=reports.append)
    assert "aliases are expanded" in str(exc.value)
    cache = FleetCache()
    assert node_pillar("not-a-node", str(p), cache=cache, report=reports.append) == {}
    assert any("aliases are expanded" in r for r in reports)
