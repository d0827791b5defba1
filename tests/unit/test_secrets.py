"""The secrets store: values kept as written, refusals that never quote a secret, masking."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from anycastlb.apply import apply_daemon
from anycastlb.compiler import compile_catalog
from anycastlb.errors import CatalogRefused
from anycastlb.secrets import MASK, load_secrets, mask, parse_secrets


def test_yaml_1_1_scalars_keep_their_written_text(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("bgp_passwords:\n  octal: 0123\n  yes: yes\n  off: Off\n  float: 1e3\n  hex: 0x1F\n"
                    "  date: 2026-12-01\n  sexagesimal: 1:20\n  quoted: \"0123\"\ncertificates:\n")
    store = load_secrets(path)
    assert store["bgp_passwords"] == {"octal": "0123", "yes": "yes", "off": "Off", "float": "1e3", "hex": "0x1F",
                                      "date": "2026-12-01", "sexagesimal": "1:20", "quoted": "0123"}
    assert store["certificates"] == {}


def test_a_malformed_file_is_refused_by_line_without_its_text() -> None:
    with pytest.raises(CatalogRefused) as err:
        parse_secrets('bgp_passwords:\n  fleet: "hunter2-very-secret\n  other: [', "s.yaml")
    text = err.value.summary()
    assert "s.yaml:" in text and "hunter2" not in text


@pytest.mark.parametrize("doc,key", [("bgp_passwords: {fleet: [a, b]}", "bgp_passwords.fleet"),
                                     ("certificates: {web: {cert: x}}", "certificates.web")])
def test_wrong_shapes_are_refused_naming_the_key(doc: str, key: str) -> None:
    with pytest.raises(CatalogRefused) as err:
        parse_secrets(doc, "s.yaml")
    assert err.value.errors[0].key == key


def test_mask_replaces_passwords_and_key_lines_everywhere() -> None:
    store = {"bgp_passwords": {"fleet": "s3cret-pw"},
             "certificates": {"c": {"cert": "PUBLIC", "key": "-----BEGIN KEY-----\nAAAABBBBCCCCDDDDEEEE\n-----END KEY-----"}}}
    out = mask({"diff": ["x s3cret-pw y", "AAAABBBBCCCCDDDDEEEE"], "n": 1}, store)
    assert out == {"diff": [f"x {MASK} y", MASK], "n": 1}
    assert mask("PUBLIC", store) == "PUBLIC"


def test_removing_a_bgp_password_shows_it_masked_in_the_diff(tmp_path: Path, campus_catalog: Path) -> None:
    model = copy.deepcopy(compile_catalog(campus_catalog).nodes["rr1"])
    bare = copy.deepcopy(model)
    for nb in model["bgp"]["neighbors"]:
        nb["password"] = "fleet"
    secrets: dict[str, Any] = {"certificates": {}, "bgp_passwords": {"fleet": "Tr0ub4dor&3"}}
    assert apply_daemon("bird", model, secrets, root=str(tmp_path), reload=False).result is True
    for test in (True, False):
        res = apply_daemon("bird", bare, {"certificates": {}, "bgp_passwords": {}}, root=str(tmp_path),
                           reload=False, test=test)
        assert "Tr0ub4dor" not in repr(res.as_state())
        assert f'-    password "{MASK}";' in res.changes["diff"]["/etc/bird/bird.conf"]
