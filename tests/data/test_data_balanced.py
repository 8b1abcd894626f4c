"""Group-balanced sampling: the data-side counterpart of the group objectives."""
import torch

from agglom.data.readers import train_loader


def _share_of_b(cfg):
    loader = train_loader(cfg, epoch=0)
    names = loader.group_names
    groups = torch.cat([b["group"] for b in loader])
    return float((groups == names.index("B")).float().mean())


def test_group_balanced_stream_draws_groups_equally(synth_root, data_cfg):
    plain = _share_of_b(data_cfg(synth_root))
    balanced = _share_of_b(data_cfg(synth_root, **{"data.group_balanced": True}))
    assert plain < 0.2  # the rare acquisition site
    assert 0.35 < balanced < 0.65


def test_explicit_group_weights(synth_root, data_cfg):
    share = _share_of_b(data_cfg(synth_root, **{"data.group_weights": {"A": 1.0, "B": 0.0}}))
    assert share == 0.0


def test_partial_balance_draws_groups_as_count_to_the_one_minus_beta(synth_root, data_cfg):
    import json

    sheet = json.loads((synth_root / "dataset.json").read_text())
    counts = sheet["attributes"]["site"]["counts"]["train"]
    n_a, n_b = counts["A"], counts["B"]
    expected = n_b ** 0.5 / (n_a ** 0.5 + n_b ** 0.5)  # β = 0.5: shares ∝ sqrt(n_g)
    share = _share_of_b(data_cfg(synth_root, **{"data.group_balance": 0.5, "data.epoch_samples": 1600}))
    natural = n_b / (n_a + n_b)
    assert natural < share < 0.5
    assert abs(share - expected) < 0.06


def test_group_balance_out_of_range_is_refused(synth_root, data_cfg):
    import pytest

    from agglom.config.load import ConfigError

    with pytest.raises(ConfigError, match="group_balance must be in"):
        train_loader(data_cfg(synth_root, **{"data.group_balance": 1.5}), epoch=0)
