from __future__ import annotations

import json

import pytest

from spac_ort.errors import ManifestError
from spac_ort.manifest import load_manifest, parse_manifest


def test_roundtrip(demo_bundle):
    m = load_manifest(demo_bundle)
    again = parse_manifest(json.loads(m.to_json()), demo_bundle / "x")
    assert again == m


def test_expert_entries_are_stored_once(demo_bundle):
    m = load_manifest(demo_bundle)
    assert not any("/experts/" in name for name in m.files)
    files = dict(m.iter_files())
    assert len([n for n in files if "/experts/" in n]) == 2 * 4 * 64
    for name, entry in files.items():
        assert (demo_bundle / name).stat().st_size == entry.size


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.pop("dims"), "'dims' is missing"),
    (lambda d: d.update(family="llama"), "'family' is 'llama'"),
    (lambda d: d["experts"].update(template="x.onnx"), "experts.template"),
    (lambda d: d["experts"]["graph_sha256"].pop(), "experts.graph_sha256"),
    (lambda d: d.update(layer_kinds=["moe"]), "layer_kinds"),
    (lambda d: d.update(kind="other"), "'kind'"),
])
def test_invalid_fields_are_named(demo_bundle, mutate, needle):
    data = json.loads((demo_bundle / "spac-manifest.json").read_text())
    mutate(data)
    with pytest.raises(ManifestError, match="re-export") as err:
        parse_manifest(data, demo_bundle / "spac-manifest.json")
    assert needle in str(err.value)
