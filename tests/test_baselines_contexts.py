"""A map never depends on which other images share the call; per-head maps patch what a head wrote.

Issue 11, defect 7: the ``mean_activation`` context averaged the residual stream over the *batch*, so
one image's CAAP (and attribution-patching) map changed with its batch mates (up to 2.9 logits on the
bundled model, 8 scenes). The fix belongs in `caap_lens.attribution.contexts` (the reference set
explicit, per image by default); fixed there (issue 10), so the test below is a plain test now.

Defect 9: `caap(heads=True)` patches ``attn.hook_z`` at token t — what head h wrote into t after
attending over all of the source's tokens — not t's content as read by h; the docs say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from caap_lens.attribution.engine import caap
from caap_lens.baselines import attribute
from conftest import tiny_vit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def vit():
    return tiny_vit(seed=61, depth=2, img_size=32)


@pytest.mark.parametrize("method", ["caap", "attribution_patching"])
def test_a_map_does_not_depend_on_the_rest_of_the_batch(vit, method):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [1, 2, 3, 4]
    together = attribute(method, vit, x, targets, context="mean_activation", layers=(1, 2)).map
    alone = torch.cat([attribute(method, vit, x[i : i + 1], targets[i : i + 1], context="mean_activation",
                                 layers=(1, 2)).map for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_image_contexts_never_depend_on_the_rest_of_the_batch(vit):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for method, options in [("occlusion", {"context": "blur"}), ("integrated_gradients", {"n_steps": 4}),
                            ("attribution_patching", {"context": "mean", "layers": (1, 2)})]:
        together = attribute(method, vit, x, [1, 2, 3], **options).map
        alone = torch.cat([attribute(method, vit, x[i : i + 1], [i + 1], **options).map for i in range(3)])
        assert torch.allclose(together, alone, atol=1e-5), method


def test_per_head_maps_carry_what_the_head_read_from_other_patches(vit):
    """Two sources identical at patch 0 and different elsewhere: patching head h's hook_z at patch 0
    gives different effects, because z at a token is what the head wrote there after attending to
    every token — not the patch's own content."""
    a = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[..., 16:, 16:] = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))  # patch 3 only
    maps = caap(vit, torch.cat([a, b]), [5, 5], heads=True, layers=(0, 1)).map  # [2, n_heads, 2, 2]
    assert not torch.allclose(maps[0, :, 0, 0], maps[1, :, 0, 0], atol=1e-6)
    # The residual stream at patch 0, layer 0, is the patch's own content: there the two sources agree.
    plain = caap(vit, torch.cat([a, b]), [5, 5], layers=(0, 1)).map
    assert torch.allclose(plain[0, 0, 0], plain[1, 0, 0], atol=1e-6)


def test_the_docs_say_what_a_per_head_map_patches():
    heads = (ROOT / "docs" / "howto" / "heads-and-circuits.md").read_text()
    assert "wrote into" in heads and "hook_k" in heads
    concepts = (ROOT / "docs" / "concepts.md").read_text()
    assert "wrote into" in concepts
    howto = (ROOT / "docs" / "howto" / "baselines-and-metrics.md").read_text()
    assert "wrote into" in howto
