"""The model's parameter layout equals the reference's, so icefall checkpoints load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icefall.zipformer import adapter_parameter_names, get_model


def read_layout(path: Path) -> tuple[dict, list[tuple[str, tuple[int, ...], int]]]:
    """Parses a layout-*.tsv: (config from the header, [(key, shape, numel)])."""
    config, rows = None, []
    for line in path.read_text().splitlines():
        if line.startswith("# config:"):
            config = json.loads(line[len("# config:"):])
        elif not line.startswith("#") and line.strip():
            key, shape, numel = line.split("\t")
            dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
            rows.append((key, dims, int(numel)))
    assert config is not None, f"{path} has no config header"
    return config, rows


@pytest.mark.parametrize("name", ["layout-default.tsv", "layout-default-adapters16.tsv"])
def test_state_dict_keys_and_shapes_equal_reference_layout(reference_dir, name):
    config, rows = read_layout(reference_dir / name)
    sd = get_model(config).state_dict()
    assert list(sd) == [key for key, _, _ in rows]
    for key, shape, numel in rows:
        assert tuple(sd[key].shape) == shape, key
        assert sd[key].numel() == numel, key


def test_default_model_has_published_parameter_counts(reference_dir):
    config, _ = read_layout(reference_dir / "layout-default.tsv")
    base = get_model(dict(config, use_adapters=False))
    assert sum(p.numel() for p in base.parameters()) == 65_549_011
    for dim, expected in [(16, 761_344), (8, 392_192)]:
        model = get_model(dict(config, use_adapters=True, adapter_dim=dim))
        names = set(adapter_parameter_names(model))
        n_adapter = sum(p.numel() for n, p in model.named_parameters() if n in names)
        assert n_adapter == expected
        assert sum(p.numel() for p in model.parameters()) == 65_549_011 + expected
