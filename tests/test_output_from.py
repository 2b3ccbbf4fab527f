"""`HookedViT.output_from`: the readout-only last block equals the full run, and hooks disable it."""

from __future__ import annotations

import pytest
import torch

from caap_lens import HookedViT


def _model(name: str, **kwargs) -> HookedViT:
    torch.manual_seed(0)
    model = HookedViT.from_timm(name, depth=3, img_size=32, **kwargs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vit_tiny_patch16_224", {}),
        ("deit_tiny_distilled_patch16_224", {}),
        ("deit3_small_patch16_224", {}),
        ("vit_small_patch14_reg4_dinov2", {"patch_size": 8}),
        ("vit_tiny_patch16_224", {"global_pool": "avg"}),
    ],
)
@pytest.mark.parametrize("start", [0, 1, 2])
def test_output_from_equals_forward(name, kwargs, start):
    model = _model(name, **kwargs)
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        resid = model(images, stop_at_layer=start)
        full = model(resid, start_at_layer=start)
        fast = model.output_from(resid, start)
    torch.testing.assert_close(fast, full, atol=2e-6, rtol=0)
    assert model.readout_tokens() == (None if kwargs.get("global_pool") == "avg" else 2 if "distilled" in name else 1)


@pytest.mark.parametrize("hook_name", ["blocks.2.mlp.hook_post", "blocks.2.hook_resid_post", "ln_final.hook_normalized"])
def test_hooks_in_the_tail_are_honoured(hook_name):
    model = _model("vit_tiny_patch16_224")
    images = torch.randn(2, 3, 32, 32)
    seen = []

    def double(act, *, hook):
        seen.append(tuple(act.shape))
        return act * 2

    with torch.inference_mode():
        resid = model(images, stop_at_layer=1)
        expected = model.run_with_hooks(resid, start_at_layer=1, fwd_hooks=[(hook_name, double)])
        seen.clear()
        with model.hooks(fwd_hooks=[(hook_name, double)]):
            got = model.output_from(resid, 1)
        unhooked = model.output_from(resid, 1)
    assert seen and seen[0][1] == model.cfg.n_tokens  # the hook saw every token: the full path ran
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert not torch.allclose(got, unhooked)
