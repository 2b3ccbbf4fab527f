"""The typed boundary around the engine: `CAAPSettings` made once, `PatchedScores`/results carrying the
source output, sweeps with explicit options, `depth_profile(patches=)`, and `attribute("caap")` running
the source once."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from caap_lens.attribution.engine import caap, caap_settings, patched_scores
from caap_lens.baselines import attribute
from caap_lens.sweeps import context_sweep, depth_profile, score_sweep, window_sweep
from conftest import images_for, tiny_vit


@pytest.fixture
def vit():
    return tiny_vit(seed=3, depth=4, img_size=64)


def test_settings_are_frozen_checked_once_and_read_as_a_mapping(vit):
    settings = caap_settings(vit, heads=[1], context="blur", scores=["logit", "prob"])
    assert settings.windows == ((1, 2),) and settings.layers == (1, 2) and settings.hook == "z"
    assert settings.heads == (1,) and settings["heads"] == [1] and settings["score"] == ["logit", "prob"]
    assert dict(settings)["context"].startswith("blur") and settings["dtype"] == "torch.float32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.hook = "resid_pre"  # type: ignore[misc]
    with pytest.raises(ValueError, match="per-head maps patch attn.hook_z"):
        caap_settings(vit, heads=True, hook="resid_pre")
    with pytest.raises(ValueError, match="not both"):
        caap_settings(vit, layers=(0, 2), windows=[(0, 1)])
    with pytest.raises(ValueError, match="dtype must be None"):
        caap_settings(vit, dtype=torch.int8)


def test_results_carry_the_source_output(vit):
    x = images_for(vit, 2, seed=5)
    with torch.inference_mode():
        expected = vit(x).float()
    result = caap(vit, x, "predicted", layers=(1, 3))
    # the engine's source run evaluates the last block for the readout token only: equal up to rounding
    assert torch.allclose(result.source_output, expected, atol=1e-5)
    assert torch.equal(result.targets, expected.argmax(-1))
    assert result.settings["layers"] == (1, 3) and result.settings.windows == ((1, 3),)
    sweep = window_sweep(vit, x, [2, 3], [(0, 1), (1, 3)])
    assert torch.allclose(sweep.source_output, expected, atol=1e-5) and sweep.grid == vit.grid
    for res in score_sweep(vit, x, [2, 3], ["logit", "margin"], layers=(1, 3)).values():
        assert torch.equal(res.source_output, result.source_output)
    assert score_sweep(vit, x, [2, 3], ["logit", "margin"])["margin"].settings["score"] == "margin"
    assert torch.equal(attribute("rollout", vit, x).source_output, expected)


def test_sweeps_take_caaps_options_explicitly(vit):
    x = images_for(vit, 1, seed=6)
    for sweep in (window_sweep, depth_profile, score_sweep, context_sweep):
        with pytest.raises(TypeError, match="unexpected keyword argument 'layer'"):
            sweep(vit, x, [1], layer=(0, 2))


def test_depth_profile_of_some_patches_equals_the_full_profile_there(vit):
    x = images_for(vit, 2, seed=7)
    full = depth_profile(vit, x, [4, 1])
    some = depth_profile(vit, x, [4, 1], patches=[5, 0, 14])
    assert some.maps.shape == full.maps.shape == (4, 2, 4, 4)
    flat_some, flat_full = some.maps.flatten(2), full.maps.flatten(2)
    assert torch.allclose(flat_some[:, :, [5, 0, 14]], flat_full[:, :, [5, 0, 14]], atol=1e-5)
    rest = [i for i in range(16) if i not in (5, 0, 14)]
    assert flat_some[:, :, rest].isnan().all()
    per_image = depth_profile(vit, x, [4, 1], patches=torch.tensor([[3, 9], [9, 10]]))
    flat = per_image.maps.flatten(2)
    assert torch.allclose(flat[:, 0, [3, 9]], flat_full[:, 0, [3, 9]], atol=1e-5)
    assert torch.allclose(flat[:, 1, [9, 10]], flat_full[:, 1, [9, 10]], atol=1e-5)
    assert flat[:, 0, 10].isnan().all() and flat[:, 1, 3].isnan().all()
    for bad in ([16], [1, 1], [[0], [1], [2]], [0.5]):
        with pytest.raises(ValueError, match="patches must be flat patch indices"):
            depth_profile(vit, x, [4, 1], patches=bad)


def test_attribute_caap_embeds_and_resolves_the_source_once(vit, monkeypatch):
    import caap_lens.attribution.engine as engine

    x = images_for(vit, 2, seed=8)
    embeds, resolutions = [], []
    resolve = engine.resolve_targets
    monkeypatch.setattr(engine, "resolve_targets", lambda *a, **k: resolutions.append(1) or resolve(*a, **k))
    handle = vit.hook_embed.register_forward_hook(lambda module, inp, out: embeds.append(out.shape[0]))
    try:
        result = attribute("caap", vit, x, "predicted", layers=(1, 3), context="black")
    finally:
        handle.remove()
    assert len(resolutions) == 1
    assert embeds == [2, 2]  # the source once, the black context once (no extra forward for the target)
    direct = caap(vit, x, "predicted", layers=(1, 3), context="black")
    assert torch.equal(result.map, direct.map) and torch.equal(result.targets, direct.targets)
    assert torch.equal(result.source_output, direct.source_output)
    assert result.timing["block_evals"] == direct.timing["block_evals"] and result.seconds > 0


def test_patched_scores_keys_every_score_and_window(vit):
    x = images_for(vit, 2, seed=9)
    settings = caap_settings(vit, windows=[(0, 2), (0, 4), (2, 3)], scores=["logit", "prob"], relative=True)
    run = patched_scores(vit, x, [1, 2], settings)
    assert set(run.maps) == {"logit", "prob"} and run.maps["prob"].shape == (3, 2, 4, 4)
    for k, window in enumerate(settings.windows):
        alone = caap(vit, x, [1, 2], layers=window, score="prob", relative=True)
        assert torch.allclose(run.maps["prob"][k], alone.map, atol=1e-6)
        assert torch.allclose(run.context_score["prob"][k], alone.context_score, atol=1e-6)


def test_depth_profile_of_regions_equals_each_single_layer_caap(vit):
    x = images_for(vit, 1, seed=10)
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[0, :2, :2], region[1, 2:, 1:] = True, True
    profile = depth_profile(vit, x, [3], region=region)
    assert profile.maps.shape == (4, 1, 2)
    for layer in range(4):
        alone = caap(vit, x, [3], layers=(layer, layer + 1), region=region)
        assert torch.allclose(profile.maps[layer], alone.map, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        depth_profile(vit, x, [3], region=region, patches=[0])
