"""The bundled `fashion-scenes-vit` model: offline loading, timm parity, recorded metrics, errors."""

from __future__ import annotations

import importlib.resources
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from caap_lens.data import FASHION_MNIST_CLASSES
from caap_lens.loading.bundled import (
    BUNDLED,
    bundled_config,
    list_bundled,
    load_bundled,
    load_bundled_scenes,
    load_bundled_timm,
)
from caap_lens.model.hooked_vit import HookedViT

NAME = "fashion-scenes-vit"


def _average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    hits = targets[order] > 0.5
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


@pytest.fixture(scope="module")
def model() -> HookedViT:
    return HookedViT.from_pretrained(NAME)


@pytest.fixture(scope="module")
def scenes():
    return load_bundled_scenes(NAME)


def test_listed_and_packaged():
    assert list_bundled() == ["fashion-scenes-dinov2", NAME]
    folder = importlib.resources.files("caap_lens") / "pretrained" / BUNDLED[NAME]
    for filename in ("model.safetensors", "config.json", "test_scenes.npz", "MODEL_CARD.md"):
        assert (folder / filename).is_file(), filename
    assert (folder / "model.safetensors").stat().st_size <= 10_000_000


def test_loads_offline_as_plain_vit(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model.class_names == FASHION_MNIST_CLASSES
    assert model.cfg.family == "vit"
    assert model.cfg.n_classes == 10 and model.cfg.image_size == (64, 64)
    config = bundled_config(NAME)
    assert model.cfg.image_mean == pytest.approx(config["mean"])
    assert model.cfg.image_std == pytest.approx(config["std"])
    assert not model.training


def test_logits_match_timm(model, scenes):
    timm_model = load_bundled_timm(NAME)
    x = model.preprocess(scenes.images[:16])
    with torch.no_grad():
        ours, theirs = model(x), timm_model(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_bundled_scenes_map_matches_config(model, scenes):
    metrics = bundled_config(NAME)["metrics"]
    assert len(scenes) == metrics["bundled_scenes"]
    assert scenes.split == "test"
    with torch.no_grad():
        scores = torch.cat([model(model.preprocess(scenes.images[i:i + 100])) for i in range(0, len(scenes), 100)])
    scores = scores.numpy()
    aps = [_average_precision(scores[:, c], scenes.labels[:, c]) for c in range(10) if scenes.labels[:, c].any()]
    assert float(np.mean(aps)) == pytest.approx(metrics["bundled_map"], abs=2e-3)
    assert 0.0 < metrics["test_map"] <= 1.0 and metrics["test_scenes"] >= len(scenes)


def test_unknown_name():
    with pytest.raises(ValueError, match="fashion-scenes-vit"):
        HookedViT.from_pretrained("no-such-model")
    with pytest.raises(ValueError, match="bundled models"):
        load_bundled_scenes("no-such-model")
    with pytest.raises(ValueError, match=r"it is a timm model: use HookedViT\.from_timm\('deit_small_patch16_224'"):
        load_bundled("deit_small_patch16_224")


def test_bundled_models_say_so_and_keep_their_own_preprocessing():
    model = load_bundled(NAME)
    assert (model.cfg.weights_kind, model.cfg.weights) == ("bundled", f"bundled: {NAME}")
    assert model.cfg.data_config is None  # trained here on 64-px scenes, resized (never cropped) to its size
    assert f"weights: bundled: {NAME})" in repr(model)


def test_unexpected_kwargs():
    with pytest.raises(TypeError, match="device, dtype"):
        load_bundled(NAME, pretrained=True)
