"""Every hook point is live (its return value reaches the output), named and shaped as in TransformerLens;
hooks are cleaned up after exceptions; start_at_layer/stop_at_layer split a run exactly."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import VARIANT_IDS, cache_of, images_for, no_hooks_left

# (variant, use_attn_result): every variant without per-head results (clip_b16 is left out: clip_b32
# has the same structure with a head, clip_b16_headless the same weights' shapes), three with them.
LIVENESS_CASES = [(v, False) for v in VARIANT_IDS if v != "clip_b16"] + [
    ("vit", True),
    ("deit3", True),
    ("deit_distilled", True),
]


def _replace(name: str, act: torch.Tensor) -> torch.Tensor:
    """A changed activation: LayerNorm scales doubled; everything else scaled plus fixed noise.

    (Noise, not a constant shift: ``act * 1.5 + 0.1`` on the last residual stream would be undone by
    the final LayerNorm, which is invariant to scaling and to a shift shared by all channels.)
    """
    if name.endswith("hook_scale"):
        return act * 2
    noise = torch.randn(act.shape, generator=torch.Generator().manual_seed(0), dtype=act.dtype)
    return act * 1.5 + 0.1 * noise


@pytest.mark.parametrize("variant,attn_result", LIVENESS_CASES)
def test_every_hook_is_live(variant, attn_result, pair):
    _, model = pair(variant)
    x = images_for(model, batch=1)
    model.set_use_attn_result(attn_result)
    try:
        with torch.no_grad():
            base = model(x)
            covered = set()
            for name, hp in model.hook_dict.items():
                calls = []

                def hook(act, hook, name=name, calls=calls):
                    calls.append(tuple(act.shape))
                    return _replace(name, act)

                out = model.run_with_hooks(x, fwd_hooks=[(name, hook)])
                if name.endswith("attn.hook_result") and not attn_result:
                    # Documented: per-head results are only computed after set_use_attn_result(True).
                    assert calls == [], f"{name} ran without set_use_attn_result(True)"
                    assert torch.equal(out, base)
                else:
                    assert len(calls) == 1, f"{name} fired {len(calls)} times"
                    assert (out - base).abs().max() > 1e-4, f"replacing {name} did not change the output"
                assert not hp.has_hooks(), f"{name} kept its hook after run_with_hooks"
                covered.add(name)
            # With the hooks gone, the plain output is back to the unhooked one.
            assert torch.equal(model(x), base)
    finally:
        model.set_use_attn_result(False)
    assert covered == set(model.hook_dict)


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "clip_b32", "vit_avg"])
def test_every_hook_fires_backward(variant, pair):
    """Backward hooks fire on every hook point, including those (attention pattern/scores, LayerNorm
    scale) that only exist on the explicit path."""
    _, model = pair(variant)
    x = images_for(model, batch=1)
    fired: dict[str, tuple] = {}

    def bwd(grad, hook):
        fired[hook.name] = tuple(grad.shape)

    model.set_use_attn_result(True)
    try:
        for name in model.hook_dict:
            model.add_hook(name, bwd, dir="bwd")
        model(x).square().sum().backward()
    finally:
        model.reset_hooks()
        model.set_use_attn_result(False)
        model.zero_grad(set_to_none=True)
    assert set(fired) == set(model.hook_dict)
    assert no_hooks_left(model)


def _expected_names(cfg) -> set[str]:
    names = {"hook_embed", "hook_pos_embed", "hook_pooled", "hook_logits"}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        names |= {b + f"hook_{n}" for n in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")}
        names |= {b + f"ln{i}.hook_{n}" for i in (1, 2) for n in ("scale", "normalized")}
        names |= {b + f"attn.hook_{n}" for n in ("q", "k", "v", "z", "attn_scores", "pattern", "result")}
        names |= {b + "mlp.hook_pre", b + "mlp.hook_post"}
    if cfg.final_norm:
        names |= {"ln_final.hook_scale", "ln_final.hook_normalized"}
    if cfg.pre_norm:
        names |= {"ln_pre.hook_scale", "ln_pre.hook_normalized"}
    if cfg.pooled_norm:
        names |= {"ln_pooled.hook_scale", "ln_pooled.hook_normalized"}
    if cfg.distilled:
        names |= {"hook_pooled_dist"}
    return names


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_transformer_lens_hook_names(variant, pair):
    _, model = pair(variant)
    assert set(model.hook_dict) == _expected_names(model.cfg)
    if model.cfg.pooling == "token":
        assert "ln_final.hook_normalized" in model.hook_dict
    for name, hp in model.hook_dict.items():
        assert hp.name == name


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "dinov2_reg4", "clip_b32"])
def test_hook_shapes(variant, pair):
    _, model = pair(variant)
    cfg = model.cfg
    _, cache = cache_of(model, attn_result=True, batch=2)
    b, p, h, dh, d = 2, cfg.n_tokens, cfg.n_heads, cfg.d_head, cfg.d_model
    assert cache["hook_embed"].shape == (b, p, d)
    assert cache["hook_pos_embed"].shape == (b, p, d)
    for layer in range(cfg.n_layers):
        for n in ("q", "k", "v", "z"):
            assert cache[n, layer].shape == (b, p, h, dh), n
        pattern = cache["pattern", layer]
        assert pattern.shape == (b, h, p, p)
        assert cache["attn_scores", layer].shape == (b, h, p, p)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(b, h, p), atol=1e-5, rtol=0)
        assert (pattern >= 0).all()
        assert cache["result", layer].shape == (b, p, h, d)
        for n in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
            assert cache[n, layer].shape == (b, p, d), n
        assert cache["pre", layer].shape == (b, p, cfg.d_mlp)
        assert cache["post", layer].shape == (b, p, cfg.d_mlp)
        assert cache[f"blocks.{layer}.ln1.hook_scale"].shape == (b, p, 1)
        assert cache[f"blocks.{layer}.ln2.hook_normalized"].shape == (b, p, d)
    assert cache["hook_pooled"].shape == (b, d)
    assert cache["hook_logits"].shape == (b, cfg.n_classes or d)


class _Boom(RuntimeError):
    pass


def _raise(act, hook):
    raise _Boom(hook.name)


@pytest.mark.parametrize("variant", ["vit", "deit3"])
def test_hooks_removed_after_exception(variant, pair):
    _, model = pair(variant)
    x = images_for(model)
    with torch.no_grad():
        before = model(x)
    n = model.cfg.n_layers
    # Hooks that switch to the explicit attention/LayerNorm path, then one that raises downstream.
    path_hooks = [
        ("blocks.0.attn.hook_pattern", lambda a, hook: a),
        ("blocks.0.ln1.hook_scale", lambda a, hook: a * 1.01),
        (lambda name: name.endswith("hook_resid_mid"), lambda a, hook: a + 0.5),
    ]
    with pytest.raises(_Boom):
        model.run_with_hooks(x, fwd_hooks=path_hooks + [(f"blocks.{n - 1}.hook_mlp_out", _raise)])
    assert no_hooks_left(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)

    with pytest.raises(_Boom):
        with model.hooks(fwd_hooks=path_hooks + [("hook_logits", _raise)]):
            assert not no_hooks_left(model)
            model(x)
    assert no_hooks_left(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)

    # An exception in the body of the context (not in a hook) cleans up too.
    with pytest.raises(KeyError):
        with model.hooks(fwd_hooks=path_hooks):
            raise KeyError("body")
    assert no_hooks_left(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "dinov2_reg4", "clip_b32", "vit_avg"])
def test_start_stop_split_equals_full_run(variant, pair):
    _, model = pair(variant)
    n = model.cfg.n_layers
    x = images_for(model)
    with torch.no_grad():
        full = model(x)
        pooled = model(x, return_type="pooled")
        for k in range(n + 1):
            resid = model(x, stop_at_layer=k)
            assert resid.shape == (2, model.cfg.n_tokens, model.cfg.d_model)
            assert torch.equal(model(resid, start_at_layer=k), full), k
            assert torch.equal(model(resid, start_at_layer=k, return_type="pooled"), pooled), k
            assert model(resid, start_at_layer=k, return_type=None) is None
            # Middle segment [k, n) as a residual-to-residual run, then the head.
            mid = model(resid, start_at_layer=k, stop_at_layer=n)
            assert torch.equal(model(mid, start_at_layer=n), full)
        # Negative indices count from the end.
        torch.testing.assert_close(model(x, stop_at_layer=-1), model(x, stop_at_layer=n - 1), atol=0, rtol=0)
        # stop_at_layer=0 is the residual before block 0 (embeddings, after ln_pre when present).
        _, cache = model.run_with_cache(x, names_filter="blocks.0.hook_resid_pre")
        assert torch.equal(model(x, stop_at_layer=0), cache["blocks.0.hook_resid_pre"])


def test_start_stop_bad_values(pair):
    _, model = pair("vit")
    n, p, d = model.cfg.n_layers, model.cfg.n_tokens, model.cfg.d_model
    x = images_for(model)
    with torch.no_grad():
        resid = model(x, stop_at_layer=1)
        bad_range = re.escape(f"[-{n}, {n}]")
        with pytest.raises(ValueError, match=rf"stop_at_layer={n + 1} is outside {bad_range}"):
            model(x, stop_at_layer=n + 1)
        with pytest.raises(ValueError, match=rf"start_at_layer=-{n + 1} is outside {bad_range}"):
            model(resid, start_at_layer=-(n + 1))
        with pytest.raises(ValueError, match=r"start_at_layer \(2\) is after stop_at_layer \(1\)"):
            model(resid, start_at_layer=2, stop_at_layer=1)
        expected = re.escape(f"[batch, {p}, {d}]")
        with pytest.raises(ValueError, match=expected):
            model(resid[:, 1:], start_at_layer=1)
        with pytest.raises(ValueError, match=expected):
            model(resid[..., :-1], start_at_layer=1)
        with pytest.raises(ValueError, match=expected):
            model(resid[0], start_at_layer=1)
        with pytest.raises(ValueError, match=expected):
            model(x, start_at_layer=1)  # images where a residual stream is expected
