"""Patching hooks (`caap_lens.patching`): exactly the masked positions are copied from the right source
row, nothing is edited in place, the hooks compose with TransformerLens's ``run_with_hooks`` and with a
user's own hooks, and bad input fails with a clear message (hooks removed afterwards)."""

from __future__ import annotations


import pytest
import torch

from caap_lens.patching import (
    PATCHABLE_HOOKS,
    patch_from_source,
    patch_hooks,
    patchable_hook_name,
    resolve_hook,
    token_mask_for_patches,
)
from conftest import images_for, no_hooks_left, tiny_vit


@pytest.fixture
def model():
    # Perturbed random init (conftest.make_timm): 4 blocks, 64 px -> 4x4 grid, 17 tokens, 3 heads.
    return tiny_vit(seed=11, depth=4, img_size=64)


def _random_mask(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A random bool mask whose rows (first axis) all differ and each hold both True and False."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        mask = torch.rand(shape, generator=gen) < 0.4
        flat = mask.flatten(1)
        rows_differ = len({tuple(r.tolist()) for r in flat}) == shape[0]
        if rows_differ and bool(flat.any(1).all()) and bool((~flat).any(1).all()):
            return mask


def _expected_patch(act, source, mask, source_index):
    """Element-by-element reference: row r, position p (, head h) from source[source_index[r]] where masked."""
    expected = act.clone()
    for r in range(act.shape[0]):
        for idx in mask[r].nonzero().tolist():
            expected[(r, *idx)] = source[(int(source_index[r]), *idx)]
    return expected


# ------------------------------------------------------------------------------ patch_from_source
@pytest.mark.parametrize("head_axis", [False, True], ids=["batch_pos", "batch_pos_head"])
def test_patch_from_source_copies_exactly_the_masked_positions(model, head_axis):
    gen = torch.Generator().manual_seed(0)
    shape = (5, 17, 3, 4) if head_axis else (5, 17, 8)  # [batch, pos, head, d_head] / [batch, pos, d]
    act = torch.randn(shape, generator=gen)
    source = torch.randn((3, *shape[1:]), generator=gen)  # three source images
    mask = _random_mask(shape[:3] if head_axis else shape[:2], seed=1)
    source_index = torch.tensor([2, 0, 1, 2, 0])  # rows take from different source images
    before = act.clone()

    hook = patch_from_source(source, mask, source_index)
    out = hook(act, hook=model.hook_dict["blocks.0.attn.hook_z" if head_axis else "blocks.0.hook_resid_pre"])

    assert torch.equal(act, before), "the hook edited its input in place"
    assert out is not act
    assert torch.equal(out, _expected_patch(act, source, mask, source_index))
    # Positions off the mask are untouched, positions on it differ from the input (random data).
    full = mask.reshape(*mask.shape, *([1] * (act.ndim - mask.ndim))).expand_as(act)
    assert torch.equal(out[~full], act[~full])
    assert bool((out[full] != act[full]).all())


def test_patch_from_source_default_and_shared_source_rows(model):
    gen = torch.Generator().manual_seed(3)
    act = torch.randn(4, 17, 8, generator=gen)
    mask = _random_mask((4, 17), seed=4)
    hp = model.hook_dict["blocks.1.hook_resid_pre"]

    # source_index=None, one source row per batch row: row i copies source row i.
    per_row = torch.randn(4, 17, 8, generator=gen)
    out = patch_from_source(per_row, mask)(act, hook=hp)
    assert torch.equal(out, _expected_patch(act, per_row, mask, torch.arange(4)))

    # source_index=None with a single source row: every row copies it.
    single = torch.randn(1, 17, 8, generator=gen)
    out = patch_from_source(single, mask)(act, hook=hp)
    assert torch.equal(out, _expected_patch(act, single, mask, torch.zeros(4, dtype=torch.long)))

    # Every row from the same source row (the broadcast shortcut) is still that row, not row 0.
    three = torch.randn(3, 17, 8, generator=gen)
    same = torch.full((4,), 2)
    out = patch_from_source(three, mask, same)(act, hook=hp)
    assert torch.equal(out, _expected_patch(act, three, mask, same))


def test_patch_composes_with_run_with_hooks_and_a_users_hook(model):
    x, src = images_for(model, 3, seed=10), images_for(model, 2, seed=20)
    name = "blocks.2.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(src, names_filter=lambda n: n == name)
        clean = model(x, stop_at_layer=2)
        patches = torch.tensor([0, 7, 15])  # a different patch per row
        mask = token_mask_for_patches(model.grid, patches)
        source_index = torch.tensor([1, 0, 1])
        patch = patch_from_source(cache[name], mask, source_index)

        seen = {}

        def user_before(act, hook):  # the user's own hook on the same point, added first
            return act + 1.0

        def user_after(act, hook):  # and one added after the patch: it sees the patched activation
            seen["act"] = act.clone()

        out = model.run_with_hooks(x, fwd_hooks=[(name, user_before), (name, patch), (name, user_after)])

        expected_resid = clean + 1.0
        for row, p in enumerate(patches.tolist()):
            tok = model.grid.token_of(p)
            expected_resid[row, tok] = cache[name][source_index[row], tok]
        assert torch.equal(seen["act"], expected_resid)
        reference = model(expected_resid, start_at_layer=2)
        assert torch.allclose(out, reference, atol=1e-5), (out - reference).abs().max()
        assert not torch.allclose(out, model(x), atol=1e-3)  # the patch and the +1 really acted
    assert no_hooks_left(model)


def test_patch_hooks_over_several_layers_from_run_with_cache(model):
    x, src = images_for(model, 2, seed=30), images_for(model, 2, seed=31)
    layers = [1, 2, 3]
    with torch.no_grad():
        _, cache = model.run_with_cache(src)  # a TransformerLens ActivationCache
        mask = torch.zeros(2, model.grid.n_tokens, dtype=torch.bool)
        mask[0, [0, 3, 9]] = True  # row 0: the CLS token and two patches
        mask[1, [5, 16]] = True
        hooks = patch_hooks(cache, "resid_pre", layers, mask)
        assert [n for n, _ in hooks] == [f"blocks.{layer}.hook_resid_pre" for layer in layers]
        out = model.run_with_hooks(x, fwd_hooks=hooks)

        # Reference: step block by block, writing the source in before each patched block.
        resid = model.embed_images(x)
        for layer, block in enumerate(model.blocks):
            if layer in layers:
                resid = torch.where(mask[..., None], cache["resid_pre", layer], resid)
            resid = block(resid)
        reference = model.unembed(resid)
    assert torch.allclose(out, reference, atol=1e-5), (out - reference).abs().max()
    assert no_hooks_left(model)


def test_patch_hooks_per_head_masks_at_hook_z(model):
    x, src = images_for(model, 2, seed=40), images_for(model, 1, seed=41)
    layers = [0, 2]
    with torch.no_grad():
        _, cache = model.run_with_cache(src, names_filter=lambda n: n.endswith("hook_z"))
        mask = torch.zeros(2, model.grid.n_tokens, model.cfg.n_heads, dtype=torch.bool)
        mask[0, 4, 1] = True  # row 0: head 1 at token 4
        mask[1, 0, 0] = mask[1, 12, 2] = True  # row 1: head 0 at CLS, head 2 at token 12
        hooks = patch_hooks(cache, "attn.hook_z", layers, mask, source_index=torch.tensor([0, 0]))
        observed = {}

        def observe(act, hook):
            observed[hook.name] = act.clone()

        names = [patchable_hook_name("z", layer) for layer in range(model.cfg.n_layers)]
        model.run_with_hooks(x, fwd_hooks=hooks + [(n, observe) for n in names])
    for layer in range(model.cfg.n_layers):
        z, src_z = observed[f"blocks.{layer}.attn.hook_z"], cache["z", layer].expand(2, -1, -1, -1)
        if layer in layers:  # patched: exactly the source at the masked heads, not elsewhere
            assert torch.equal(z[mask], src_z[mask])
            assert bool((z[~mask] != src_z[~mask]).any())
        else:  # layers not asked for are left alone
            assert bool((z[mask] != src_z[mask]).all())
    assert no_hooks_left(model)


# ------------------------------------------------------------------------------------ hook names
@pytest.mark.parametrize(
    "given,short",
    [
        ("resid_pre", "resid_pre"),
        ("hook_resid_pre", "resid_pre"),
        ("hook_resid_mid", "resid_mid"),
        ("resid_post", "resid_post"),
        ("hook_attn_out", "attn_out"),
        ("hook_mlp_out", "mlp_out"),
        ("z", "z"),
        ("attn.hook_z", "z"),
        ("hook_z", "z"),
        ("mlp.hook_post", "mlp_post"),
        ("mlp_post", "mlp_post"),
    ],
)
def test_resolve_hook_accepts_short_and_hook_point_names(given, short):
    assert resolve_hook(given) == short


def test_every_patchable_hook_is_a_hook_point_of_the_model(model):
    for short in PATCHABLE_HOOKS:
        for layer in range(model.cfg.n_layers):
            assert patchable_hook_name(short, layer) in model.hook_dict
    assert patchable_hook_name("attn.hook_z", 3) == "blocks.3.attn.hook_z"
    assert patchable_hook_name("mlp.hook_post", 0) == "blocks.0.mlp.hook_post"


@pytest.mark.parametrize("bad", ["resid", "hook_q", "blocks.0.hook_resid_pre", "attn_pattern"])
def test_unknown_hook_names_list_the_choices(model, bad):
    with pytest.raises(ValueError, match=rf"unknown hook '{bad}'.*resid_pre.*resid_mid.*attn_out.*mlp_out.*z.*mlp_post"):
        resolve_hook(bad)
    mask = torch.zeros(1, model.grid.n_tokens, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown hook"):
        patch_hooks({}, bad, [0], mask)


def test_patch_hooks_names_a_missing_cache_entry(model):
    with torch.no_grad():
        _, cache = model.run_with_cache(images_for(model, 1, seed=50), names_filter=lambda n: "resid_pre" in n)
    mask = torch.zeros(1, model.grid.n_tokens, dtype=torch.bool)
    with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.hook_post.*names_filter"):
        patch_hooks(cache, "mlp_post", [1], mask)


# ------------------------------------------------------------------------------------ bad masks
@pytest.mark.parametrize(
    "hook_name,mask_shape",
    [
        ("blocks.0.hook_resid_pre", (2, 16)),  # one position short
        ("blocks.0.hook_resid_pre", (17,)),  # no batch axis
        ("blocks.0.hook_resid_pre", (3, 17)),  # 3 mask rows for a batch of 2
        ("blocks.0.hook_resid_pre", (2, 17, 3)),  # a per-head mask on the residual stream
        ("blocks.0.attn.hook_z", (2, 17, 4)),  # 4 heads for a 3-head model
    ],
)
def test_mask_of_the_wrong_shape_is_an_error_and_hooks_are_removed(model, hook_name, mask_shape, no_shape_checks):
    x = images_for(model, 2, seed=60)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n == hook_name)
        base = model(x)
        hook = patch_from_source(cache[hook_name], torch.ones(mask_shape, dtype=torch.bool))
        with pytest.raises(ValueError, match=r"patch mask of shape .* does not fit activation .*expected \[batch"):
            model.run_with_hooks(x, fwd_hooks=[(hook_name, hook)])
        assert no_hooks_left(model)
        assert torch.equal(model(x), base)


def test_non_bool_mask_is_an_error(model, no_shape_checks):
    source = torch.zeros(1, 17, 8)
    for mask in (torch.ones(1, 17), torch.ones(1, 17, dtype=torch.long)):
        with pytest.raises(TypeError, match="patch mask must be bool"):
            patch_from_source(source, mask)


def test_source_of_the_wrong_shape_is_an_error(model):
    x = images_for(model, 2, seed=70)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("mlp.hook_post"))
        mask = torch.ones(2, 17, dtype=torch.bool)
        wrong = patch_from_source(cache["blocks.0.mlp.hook_post"], mask)  # d_mlp source at the residual
        with pytest.raises(ValueError, match=r"source activation .* does not match blocks\.0\.hook_resid_pre"):
            model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_pre", wrong)])
    assert no_hooks_left(model)


def test_hooks_are_removed_after_an_exception_in_another_hook(model):
    x, src = images_for(model, 2, seed=80), images_for(model, 2, seed=81)
    with torch.no_grad():
        _, cache = model.run_with_cache(src)
        base = model(x)
        hooks = patch_hooks(cache, "resid_mid", [0, 1, 2], torch.ones(2, 17, dtype=torch.bool))

        def boom(act, hook):
            raise RuntimeError("user hook failed")

        with pytest.raises(RuntimeError, match="user hook failed"):
            model.run_with_hooks(x, fwd_hooks=hooks + [("blocks.2.hook_mlp_out", boom)])
        assert no_hooks_left(model)
        assert torch.equal(model(x), base)


def test_token_mask_for_patches(model):
    grid = model.grid
    mask = token_mask_for_patches(grid, torch.tensor([0, 5, 15]))
    assert mask.shape == (3, grid.n_tokens) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [1, 1, 1]
    assert [int(r.nonzero()) for r in mask] == [grid.token_of(p) for p in (0, 5, 15)]
    with pytest.raises(IndexError, match=r"\[0, 16\)"):
        token_mask_for_patches(grid, torch.tensor([16]))
