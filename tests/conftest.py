"""Shared test fixtures. Tests never reach the network: hub lookups fail fast offline."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- data fixtures
@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic bias benchmark (``agglom data synth``: 240 samples, 32 px, 40 per shard, with twin)."""
    from agglom.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("synth") / "ds"
    write_synth(str(root), SynthParams(n=240, image_size=32, seed=0), twin=True, shard_size=40)
    return root
