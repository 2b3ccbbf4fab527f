"""Model randomisation through the embedding, over several seeds, with intervals (issue 11, defect 8)."""

from __future__ import annotations

import pytest
import torch

from caap_lens.metrics import randomisation_check, randomise_layers
from caap_lens.stats import mean_ci
from conftest import tiny_vit


def _build():
    return tiny_vit(seed=51, depth=2, img_size=32)


@pytest.fixture
def vit():
    return _build()


def embedding_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("embed.", "pos_embed."))}


def input_gradient(model, x, t):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[torch.arange(x.shape[0]), t].sum(), x)
    return grad.abs().sum(1)


def test_the_cascade_goes_through_the_embedding():
    """Regression: the embedding (patch projection, position embedding, CLS token) was never randomised."""
    model = _build()
    before = embedding_state(model)
    assert before  # the model has embedding parameters under these names
    blocks_only = randomise_layers(model, 0, seed=1)
    assert all(torch.equal(v, embedding_state(blocks_only)[k]) for k, v in before.items())
    everything = randomise_layers(model, "embed", seed=1)
    after = embedding_state(everything)
    assert all(not torch.equal(v, after[k]) for k, v in before.items() if v.abs().sum() > 0 or v.numel() > 1)
    # nested: the embed stage's blocks are those of start_layer=0 with the same seed
    assert torch.equal(everything.blocks[1].attn.W_Q, blocks_only.blocks[1].attn.W_Q)
    assert all(torch.equal(v, embedding_state(model)[k]) for k, v in before.items())  # original untouched
    with pytest.raises(TypeError, match="embed"):
        randomise_layers(model, "head")


def test_randomisation_check_over_seeds_reports_intervals_and_counts(vit):
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    report = randomisation_check(input_gradient, vit, x, "predicted", seeds=[0, 1, 2])
    assert report["start_layers"] == (2, 1, 0, "embed") and report["seeds"] == (0, 1, 2)
    assert report["spearman"].shape == (4, 15) and report["top_overlap"].shape == (4, 15)
    assert report["ci_spearman"].shape == (4, 2) and report["n_images"].tolist() == [5] * 4
    per_image = report["spearman"].view(4, 3, 5).mean(1)
    for stage in range(4):
        mean, lo, hi = mean_ci(per_image[stage])
        assert report["mean_spearman"][stage] == pytest.approx(mean)
        assert report["ci_spearman"][stage].tolist() == pytest.approx([lo, hi])
    assert report["mean_spearman"][-1] < 0.5  # nothing of the trained model is left
    # The seeds differ: the same stage gives other maps with another seed.
    assert not torch.equal(report["spearman"][-1, :5], report["spearman"][-1, 5:10])


def test_undefined_correlations_are_counted(vit):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def flat_on_random_models(model, images, targets):
        return input_gradient(model, images, targets) if model is vit else torch.ones(3, 32, 32)

    report = randomisation_check(flat_on_random_models, vit, x, "predicted", start_layers=[0], seeds=[0, 1])
    assert report["n_undefined"].tolist() == [6] and report["n_images"].tolist() == [0]
    assert report["mean_spearman"].isnan().all()


def test_randomising_the_head_reinitialises_the_attention_pool():
    model = tiny_vit(seed=5, depth=2, img_size=32, patch_size=8, global_pool="map", class_token=False)
    same = randomise_layers(model, 2, seed=0, head=False)
    fresh = randomise_layers(model, 2, seed=0, head=True)
    before = dict(model.attn_pool.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in same.attn_pool.named_parameters())
    changed = [n for n, p in fresh.attn_pool.named_parameters() if not torch.equal(p, before[n])]
    assert "latent" in " ".join(changed) or len(changed) >= 4, changed
