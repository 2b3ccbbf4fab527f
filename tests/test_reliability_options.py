"""The audit of timm ``VisionTransformer``'s constructor options: none may be ignored silently.

`OPTIONS` accounts for every parameter of ``VisionTransformer.__init__``: how `from_timm` handles it
(``modelled``: read into the config, with parity; ``eval``: no effect in eval mode, e.g. dropout;
``refused``: values HookedViT does not model raise `UnsupportedModelError` naming the option). A timm
release that adds an option fails `test_every_constructor_option_is_accounted_for` until it is audited.
`test_option_value` then runs, for options the fuzz test (`test_fuzz_parity.py`) does not draw, one
value each: either the converted model equals timm bit for bit, or the refusal names the option.
"""

from __future__ import annotations

import inspect
from functools import partial

import pytest
import torch
from torch import nn

from caap_lens.loading.timm_vit import UnsupportedModelError, from_timm

from conftest import get_timm, perturb_
from test_fuzz_parity import check_config

OPTIONS = {
    "img_size": "modelled", "patch_size": "modelled", "in_chans": "modelled", "num_classes": "modelled",
    "global_pool": "modelled", "embed_dim": "modelled", "depth": "modelled", "num_heads": "modelled",
    "mlp_ratio": "modelled", "qkv_bias": "modelled", "qk_norm": "refused", "scale_attn_norm": "refused",
    "scale_mlp_norm": "refused", "proj_bias": "modelled", "init_values": "modelled",
    "class_token": "modelled", "pos_embed": "refused", "no_embed_class": "modelled",
    "reg_tokens": "modelled", "pre_norm": "modelled", "final_norm": "modelled", "fc_norm": "modelled",
    "pool_include_prefix": "modelled", "dynamic_img_size": "modelled", "dynamic_img_pad": "refused",
    "drop_rate": "eval", "pos_drop_rate": "eval", "patch_drop_rate": "eval", "proj_drop_rate": "eval",
    "attn_drop_rate": "eval", "drop_path_rate": "eval", "weight_init": "eval", "fix_init": "eval",
    "embed_layer": "refused", "embed_norm_layer": "refused", "norm_layer": "refused", "act_layer": "refused",
    "block_fn": "refused", "mlp_layer": "refused", "attn_layer": "refused", "device": "modelled",
    "dtype": "modelled",
}

HOW = {
    "modelled": "read into the config; parity with timm tested",
    "eval": "no effect in eval mode (dropout, patch dropout, weight init); converts exactly",
    "refused": "values HookedViT does not model raise `UnsupportedModelError` naming the option",
}
REFUSED_VALUES = {
    "qk_norm": "`True`", "scale_attn_norm": "`True`", "scale_mlp_norm": "`True`", "pos_embed": "`'none'`",
    "dynamic_img_pad": "`True`", "embed_layer": "anything but timm's `PatchEmbed`",
    "embed_norm_layer": "any norm", "norm_layer": "anything but LayerNorm (any eps)",
    "act_layer": "anything but GELU, GELU-tanh, QuickGELU, ReLU", "block_fn": "anything but timm's `Block`",
    "mlp_layer": "anything but timm's `Mlp`", "attn_layer": "anything but timm's `Attention`",
}
NOTES = {
    "global_pool": "`'token'`, `'avg'`, `'max'`, `'avgmax'`, `'map'` (SigLIP's attention pool, hooked) modelled; "
    "`''`, `'prr'` refused",
    "depth": "`0` refused", "pool_include_prefix": "modelled for the avg/max/avgmax pools",
    "dynamic_img_size": "`True` modelled: any image size that is a whole number of patches, the position "
    "embedding resampled per forward as timm does; every function follows the input's grid (`HookedViT.at_size`)",
    "block_fn": "refused: anything but timm's `Block` (`ResPostBlock` is post-norm: its norms act on the "
    "attention and MLP outputs, where the `ln1`/`ln2` hooks cannot sit)", "in_chans": "mean/std averaged over channels "
    "when the pretrained config has another channel count",
}


def options_table() -> str:
    """The audit as a Markdown table (rendered into docs/reliability.md by test_reliability.py)."""
    rows = ["| option | handling | note |", "|---|---|---|"]
    for name, how in OPTIONS.items():
        note = NOTES.get(name) or (f"refused: {REFUSED_VALUES[name]}" if name in REFUSED_VALUES else "")
        rows.append(f"| `{name}` | {how} | {note} |")
    return "\n".join(rows) + "\n"


def test_every_refused_option_says_which_values():
    assert {n for n, how in OPTIONS.items() if how == "refused"} == set(REFUSED_VALUES)


BASE = dict(
    img_size=(8, 12), patch_size=4, in_chans=3, num_classes=5, embed_dim=16, depth=2, num_heads=2,
    mlp_ratio=4.0, qkv_bias=True, proj_bias=True, init_values=None, class_token=True, no_embed_class=False,
    reg_tokens=0, pre_norm=False, final_norm=True, fc_norm=None, pool_include_prefix=False,
    dynamic_img_size=False, act_layer="gelu", qk_norm=False, scale_attn_norm=False, scale_mlp_norm=False,
    pos_embed="learn", drop_rate=0.0, patch_drop_rate=0.0, global_pool="token",
)


def test_every_constructor_option_is_accounted_for():
    timm = get_timm()
    params = list(inspect.signature(timm.models.vision_transformer.VisionTransformer.__init__).parameters)[1:]
    unaudited = sorted(set(params) - set(OPTIONS))
    assert not unaudited, f"timm options not audited (add them to OPTIONS and test them): {unaudited}"


def _layers():
    timm = get_timm()
    vt_mod = timm.models.vision_transformer
    return timm.layers, vt_mod


def _value_cases():
    layers, vt_mod = _layers()
    return [
        # (id, overrides, None for "converts exactly" or the words the refusal must contain)
        ("drop_rates", dict(drop_rate=0.1, pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1,
                            drop_path_rate=0.1, patch_drop_rate=0.5), None),
        ("weight_init_jax", dict(weight_init="jax"), None),
        ("fix_init", dict(fix_init=True), None),
        ("norm_layer_eps", dict(norm_layer=partial(nn.LayerNorm, eps=1e-5)), None),
        ("dtype_float64", dict(dtype=torch.float64), None),
        ("act_layer_module", dict(act_layer=nn.ReLU), None),
        ("norm_layer_rms", dict(norm_layer="rmsnorm"), "norm_layer"),
        ("embed_norm_layer", dict(embed_norm_layer="layernorm"), "embed_norm_layer"),
        ("mlp_layer_swiglu", dict(mlp_layer=layers.SwiGLUPacked, act_layer="silu"), "mlp_layer"),
        ("attn_layer_diff", dict(attn_layer="diff"), "attn_layer"),
        ("block_fn_respost", dict(block_fn=vt_mod.ResPostBlock), "block_fn"),
        ("block_fn_parallel", dict(block_fn=vt_mod.ParallelScalingBlock), "block_fn"),
        ("dynamic_img_pad", dict(dynamic_img_pad=True), "dynamic_img_pad"),
        ("pos_embed_none", dict(pos_embed="none"), "pos_embed='none'"),
        ("act_layer_gelu_tanh_module", dict(act_layer=partial(nn.GELU, approximate="tanh")), None),
    ]


CASE_IDS = [c[0] for c in _value_cases()]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_option_value(case_id):
    _, overrides, refusal = next(c for c in _value_cases() if c[0] == case_id)
    kwargs = {**BASE, **overrides}
    if refusal is None and "dtype" not in overrides:
        assert check_config(kwargs) == "converted"
        return
    timm = get_timm()
    torch.manual_seed(0)
    model = perturb_(timm.models.vision_transformer.VisionTransformer(**kwargs).eval())
    if refusal is not None:
        with pytest.raises(UnsupportedModelError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
            from_timm(model)
        return
    hooked = from_timm(model)  # float64: the converted model keeps timm's dtype
    assert hooked.dtype == torch.float64
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(hooked(x), model(x))
