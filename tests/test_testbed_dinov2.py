"""The deep testbed ``fashion-scenes-dinov2``: real DINOv2-S/14 blocks + the shipped fine-tuned tensors.

Needs the real weights (``make real-model``; ``make test`` provisions them). Without them these tests skip
with the command to run, except under CI, where that is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from caap_lens import HookedViT
from caap_lens.loading import real_dinov2 as rd
from caap_lens.loading.bundled import bundled_config, bundled_path, load_bundled_scenes, load_bundled_timm

NAME = "fashion-scenes-dinov2"


@pytest.fixture(scope="module")
def testbed():
    try:
        rd.checkpoint_path(168)
    except rd.MissingRealWeightsError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provision the real weights first: {err}")
        pytest.skip(str(err))
    return load_bundled_timm(NAME), HookedViT.from_pretrained(NAME)


def test_ships_only_what_training_changed():
    from safetensors.torch import load_file

    shipped = load_file(str(bundled_path(NAME, "model.safetensors")))
    trained = tuple(f"{name}." for name in bundled_config(NAME)["training"]["trained"])
    assert shipped and all(k.startswith(trained) for k in shipped)
    assert all(v.dtype == torch.float16 for v in shipped.values())
    assert bundled_path(NAME, "model.safetensors").stat().st_size < 20_000_000


def test_frozen_blocks_are_the_real_backbone(testbed):
    from safetensors.torch import load_file

    timm_model, _ = testbed
    real = load_file(str(rd.checkpoint_path(168)))
    first_trained = bundled_config(NAME)["training"]["args"]["train_from"]
    ours = timm_model.state_dict()
    for key, value in real.items():
        frozen = not key.startswith(tuple(f"blocks.{i}." for i in range(first_trained, 12)) + ("norm.",))
        assert torch.equal(ours[key], value) == frozen, key


def test_hooked_equals_timm_bit_for_bit(testbed):
    timm_model, hooked = testbed
    scenes = load_bundled_scenes(NAME, "test", 4)
    x = hooked.preprocess(scenes.images)
    assert hooked.cfg.n_layers == 12 and hooked.grid.grid_size == (12, 12) and hooked.cfg.n_classes == 6
    with torch.no_grad():
        assert torch.equal(hooked(x), timm_model(x))


def test_test_map_reproduces(testbed):
    """mAP on the first 300 test scenes is high and close to the model card's (2,000 scenes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_default_model import mean_average_precision

    _, hooked = testbed
    scenes = load_bundled_scenes(NAME, "test", 300)
    with torch.no_grad():
        logits = torch.cat([hooked(hooked.preprocess(scenes.images[i:i + 50])) for i in range(0, 300, 50)])
    value, _ = mean_average_precision(logits.numpy(), scenes.labels)
    card = bundled_config(NAME)["metrics"]["test_map"]
    assert value >= 0.9 and abs(value - card) < 0.03, (value, card)


def test_dev_and_test_scenes_are_rebuilt_exactly():
    a = load_bundled_scenes(NAME, "dev", 3, removals=True)
    b = load_bundled_scenes(NAME, "dev", 3)
    t = load_bundled_scenes(NAME, "test", 3)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, t.images)
    assert a.removal_images.shape == (3, 3, 168, 168, 3) and a.class_names[0] == "top"
    with pytest.raises(ValueError, match="split must be one of"):
        load_bundled_scenes(NAME, "train", 3)
