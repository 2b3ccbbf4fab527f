"""PatchGrid's patch/token/pixel mapping (checked against timm's patch embedding) and preprocessing."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from caap_lens import HookedViT, HookedViTConfig, PatchGrid
from caap_lens.preprocessing import denormalize, preprocess
from conftest import make_timm

GRID = PatchGrid(grid_size=(4, 6), patch_size=(8, 8), n_prefix_tokens=2)  # image (32, 48)
MEAN = (0.2, 0.5, 0.7)
STD = (0.1, 0.25, 0.4)


# ------------------------------------------------------------------------------------ PatchGrid
def test_grid_sizes():
    assert GRID.image_size == (32, 48)
    assert GRID.n_patches == 24
    assert GRID.n_tokens == 26


def test_grid_round_trips_every_patch():
    gh, gw = GRID.grid_size
    seen_tokens, seen_cells = set(), set()
    for patch in range(GRID.n_patches):
        token = GRID.token_of(patch)
        row, col = GRID.rc_of(patch)
        assert GRID.patch_of_token(token) == patch
        assert GRID.patch_of_rc(row, col) == patch
        assert GRID.n_prefix_tokens <= token < GRID.n_tokens
        assert 0 <= row < gh and 0 <= col < gw
        seen_tokens.add(token)
        seen_cells.add((row, col))
        top, left, bottom, right = GRID.pixel_box(patch)
        assert (bottom - top, right - left) == GRID.patch_size
        assert (top // 8, left // 8) == (row, col)
    assert seen_tokens == set(range(GRID.n_prefix_tokens, GRID.n_tokens))
    assert seen_cells == {(r, c) for r in range(gh) for c in range(gw)}
    # Row-major: the next patch along a row is the next column.
    assert GRID.rc_of(1) == (0, 1) and GRID.rc_of(gw) == (1, 0)


def test_to_grid_and_to_pixels_nearest():
    values = torch.arange(GRID.n_patches, dtype=torch.float32) * 1.5 - 3
    grid = GRID.to_grid(values)
    assert grid.shape == GRID.grid_size
    for patch in range(GRID.n_patches):
        assert grid[GRID.rc_of(patch)] == values[patch]
    pixels = GRID.to_pixels(grid)
    assert pixels.shape == GRID.image_size
    covered = torch.zeros(GRID.image_size, dtype=torch.int64)
    for patch in range(GRID.n_patches):
        top, left, bottom, right = GRID.pixel_box(patch)
        assert (pixels[top:bottom, left:right] == values[patch]).all()
        covered[top:bottom, left:right] += 1
    assert (covered == 1).all()  # the boxes tile the image
    # Leading batch axes are kept.
    batched = torch.randn(2, 3, GRID.n_patches)
    assert GRID.to_grid(batched).shape == (2, 3, 4, 6)
    assert torch.equal(GRID.to_grid(batched).flatten(-2), batched)
    assert GRID.to_pixels(GRID.to_grid(batched)).shape == (2, 3, 32, 48)


def test_to_pixels_bilinear():
    maps = torch.randn(2, *GRID.grid_size)
    up = GRID.to_pixels(maps, mode="bilinear")
    assert up.shape == (2, *GRID.image_size)
    # A constant map stays constant; values stay within the map's range.
    const = GRID.to_pixels(torch.full(GRID.grid_size, 0.3), mode="bilinear")
    torch.testing.assert_close(const, torch.full(GRID.image_size, 0.3))
    assert up.min() >= maps.min() - 1e-6 and up.max() <= maps.max() + 1e-6
    # Patch centres are interpolated smoothly: not the nearest-neighbour blocks.
    assert not torch.equal(up, GRID.to_pixels(maps))


def test_pool_pixels_inverts_nearest():
    maps = torch.randn(3, *GRID.grid_size)
    pixels = GRID.to_pixels(maps)
    torch.testing.assert_close(GRID.pool_pixels(pixels), maps)
    torch.testing.assert_close(GRID.pool_pixels(pixels, reduce="sum"), maps * 64)
    # Mean pooling of an arbitrary pixel map is the per-box mean.
    arbitrary = torch.randn(*GRID.image_size)
    pooled = GRID.pool_pixels(arbitrary)
    for patch in (0, 7, 23):
        top, left, bottom, right = GRID.pixel_box(patch)
        torch.testing.assert_close(pooled[GRID.rc_of(patch)], arbitrary[top:bottom, left:right].mean())


def test_token_mask():
    mask = torch.zeros(2, *GRID.grid_size, dtype=torch.bool)
    mask[0, 1, 2] = True
    mask[1, 3, 5] = True
    mask[1, 0, 0] = True
    tokens = GRID.token_mask(mask)
    assert tokens.shape == (2, GRID.n_tokens) and tokens.dtype == torch.bool
    assert not tokens[:, : GRID.n_prefix_tokens].any()
    assert tokens[0].nonzero().flatten().tolist() == [GRID.token_of(GRID.patch_of_rc(1, 2))]
    assert tokens[1].nonzero().flatten().tolist() == sorted(
        [GRID.token_of(GRID.patch_of_rc(3, 5)), GRID.token_of(GRID.patch_of_rc(0, 0))]
    )
    full = GRID.token_mask(torch.ones(GRID.grid_size, dtype=torch.bool))
    assert full.tolist() == [False] * 2 + [True] * 24


def test_the_grids_own_errors_for_what_the_annotations_exclude(no_shape_checks):
    """Users run without the shape checks: a flat map and a float mask get the grid's own messages."""
    with pytest.raises(ValueError, match=re.escape("(4, 6)")):
        GRID.to_pixels(torch.zeros(24))
    with pytest.raises(TypeError, match="bool"):
        GRID.token_mask(torch.zeros(4, 6))


def test_grid_errors():
    for bad in (-1, 24, 100):
        with pytest.raises(IndexError, match=r"\[0, 24\)"):
            GRID.token_of(bad)
        with pytest.raises(IndexError):
            GRID.rc_of(bad)
        with pytest.raises(IndexError):
            GRID.pixel_box(bad)
    for bad in (0, 1, 26, -1):
        with pytest.raises(IndexError, match=r"\[2, 26\)"):
            GRID.patch_of_token(bad)
    for row, col in ((4, 0), (0, 6), (-1, 0), (0, -1)):
        with pytest.raises(IndexError, match=re.escape("(4, 6)")):
            GRID.patch_of_rc(row, col)
    with pytest.raises(ValueError, match="24 patches"):
        GRID.to_grid(torch.zeros(25))
    with pytest.raises(ValueError, match=re.escape("(4, 6)")):
        GRID.to_pixels(torch.zeros(6, 4))  # transposed grid
    with pytest.raises(ValueError, match="nearest"):
        GRID.to_pixels(torch.zeros(4, 6), mode="cubic")
    with pytest.raises(ValueError, match=re.escape("(32, 48)")):
        GRID.pool_pixels(torch.zeros(48, 32))
    with pytest.raises(ValueError, match="reduce"):
        GRID.pool_pixels(torch.zeros(32, 48), reduce="max")
    with pytest.raises(ValueError, match="patch mask"):
        GRID.token_mask(torch.zeros(6, 4, dtype=torch.bool))


def test_patch_order_matches_timm_patch_embedding():
    """Light one patch's pixel block at a time: exactly that patch's token embedding changes, and our
    patch tokens are timm's patch-embedding output in order (so row-major order is timm's)."""
    timm_model = make_timm("deit_tiny_distilled_patch16_224", seed=5, img_size=(32, 48), patch_size=8)
    model = HookedViT.from_timm(timm_model)
    assert model.grid == GRID
    assert model.cfg.grid_size == (4, 6) and model.cfg.n_prefix_tokens == 2
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(GRID.n_patches + 1, 3, *GRID.image_size)  # last image: all zeros
    for patch in range(GRID.n_patches):
        top, left, bottom, right = GRID.pixel_box(patch)
        images[patch, :, top:bottom, left:right] = torch.randn(3, 8, 8, generator=gen) + 2
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter="hook_embed")
        timm_patches = timm_model.patch_embed(images)
        timm_out = timm_model(images)
        ours_out = model(images)
    embed = cache["hook_embed"]
    torch.testing.assert_close(embed[:, GRID.n_prefix_tokens :], timm_patches, atol=1e-6, rtol=0)
    changed = (embed[:-1] - embed[-1:]).abs().amax(-1) > 1e-4  # [patch image, token]
    for patch in range(GRID.n_patches):
        assert changed[patch].nonzero().flatten().tolist() == [GRID.token_of(patch)], patch
    torch.testing.assert_close(ours_out, timm_out, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------------- preprocessing
def _rgb_array(h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _expected(array_hwc_uint8):
    x = torch.from_numpy(array_hwc_uint8).permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _pp(images, **kw):
    return preprocess(images, image_size=(32, 48), mean=MEAN, std=STD, **kw)


def test_preprocess_pil_rgb_and_grayscale():
    arr = _rgb_array()
    out = _pp(Image.fromarray(arr, "RGB"), resize=False)
    assert out.shape == (1, 3, 32, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, _expected(arr))
    gray = arr[:, :, 0]
    out = _pp(Image.fromarray(gray, "L"), resize=False)
    assert out.shape == (1, 3, 32, 48)
    torch.testing.assert_close(out, _expected(np.repeat(gray[:, :, None], 3, axis=2)))


def test_preprocess_read_only_input_does_not_warn():
    arr = _rgb_array()
    arr.flags.writeable = False  # as np.asarray(PIL image) is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _pp(arr, resize=False)
        _pp(Image.fromarray(_rgb_array()), resize=False)
    torch.testing.assert_close(out, _expected(_rgb_array()))


def test_preprocess_numpy_and_tensors():
    arr = _rgb_array()
    rgba = np.concatenate([arr, np.full((32, 48, 1), 17, dtype=np.uint8)], axis=2)
    torch.testing.assert_close(_pp(rgba, resize=False), _expected(arr))
    torch.testing.assert_close(_pp(arr.astype(np.float32) / 255, resize=False), _expected(arr))
    chw = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    assert chw.dtype == torch.uint8 and chw.shape == (3, 32, 48)
    torch.testing.assert_close(_pp(chw, resize=False), _expected(arr))
    nchw = torch.stack([chw, chw.flip(-1)]).float() / 255
    out = _pp(nchw, resize=False)
    assert out.shape == (2, 3, 32, 48)
    torch.testing.assert_close(out[0:1], _expected(arr))
    torch.testing.assert_close(out[1:2], _expected(arr[:, ::-1].copy()))


def test_preprocess_list_and_resize():
    arr = _rgb_array()
    big = _rgb_array(64, 96, seed=3)
    items = [Image.fromarray(arr), arr, torch.from_numpy(big).permute(2, 0, 1)]
    out = _pp(items)
    assert out.shape == (3, 3, 32, 48)
    torch.testing.assert_close(out[0:1], _expected(arr))
    torch.testing.assert_close(out[1:2], _expected(arr))
    torch.testing.assert_close(out[2:3], _pp(big))
    # Resizing a constant image keeps the constant; resize=False refuses another size.
    const = np.full((50, 70, 3), 128, dtype=np.uint8)
    torch.testing.assert_close(_pp(const), _expected(np.full((32, 48, 3), 128, dtype=np.uint8)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=re.escape("(32, 48)")):
        _pp(const, resize=False)
    with pytest.raises(ValueError, match=re.escape("(32, 48)")):
        _pp([arr, big], resize=False)


def test_preprocess_errors():
    with pytest.raises(ValueError, match="no images"):
        _pp([])
    with pytest.raises(TypeError, match="PIL image, numpy array or torch tensor"):
        _pp("cat.png")
    with pytest.raises(ValueError, match="NHWC"):
        _pp(np.zeros((1, 1, 32, 48, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        _pp(torch.zeros(3, 32, 48, dtype=torch.int32))
    with pytest.raises(ValueError, match="2-channel"):
        _pp(torch.zeros(2, 32, 48))


def test_denormalize_inverts_preprocess():
    arr = _rgb_array()
    x = _pp(arr, resize=False)
    torch.testing.assert_close(denormalize(x, MEAN, STD), torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)


def _tiny_model(**kw) -> HookedViT:
    torch.manual_seed(0)
    cfg = HookedViTConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, image_size=(16, 24), patch_size=8,
                          n_classes=5, image_mean=MEAN, image_std=STD, **kw)
    return HookedViT(cfg)


def test_model_preprocess_uses_model_mean_std_dtype():
    model = _tiny_model()
    mean_image = torch.tensor(MEAN).view(1, 3, 1, 1).expand(1, 3, 16, 24)
    out = model.preprocess(mean_image)
    assert out.dtype == model.dtype and out.device == model.device
    torch.testing.assert_close(out, torch.zeros(1, 3, 16, 24), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.preprocess(mean_image + torch.tensor(STD).view(1, 3, 1, 1)),
                               torch.ones(1, 3, 16, 24), atol=1e-6, rtol=0)
    # Resized to the model's size by default; output runs through the model.
    out = model.preprocess(Image.fromarray(_rgb_array(40, 40)))
    assert out.shape == (1, 3, 16, 24)
    assert model(out).shape == (1, 5)
    double = _tiny_model().double()
    out = double.preprocess(mean_image)
    assert out.dtype == torch.float64
    assert double(out).dtype == torch.float64


def test_model_preprocess_uses_timm_pretrained_mean(pair):
    timm_model, model = pair("clip_b32")
    mean = tuple(timm_model.pretrained_cfg["mean"])
    assert model.cfg.image_mean == pytest.approx(mean)
    assert model.cfg.image_mean != pytest.approx((0.485, 0.456, 0.406))  # CLIP's, not ImageNet's
    image = torch.tensor(mean).view(1, 3, 1, 1).expand(1, 3, 224, 224)
    torch.testing.assert_close(model.preprocess(image), torch.zeros(1, 3, 224, 224), atol=1e-6, rtol=0)


def test_forward_rejects_bad_input():
    model = _tiny_model()
    expected = re.escape("[batch, 3, 16, 24]")
    good = torch.randn(2, 3, 16, 24)
    assert model(good).shape == (2, 5)
    with pytest.raises(TypeError, match="preprocess"):
        model((good * 50).clamp(0, 255).to(torch.uint8))
    with pytest.raises(ValueError, match=re.escape("unsqueeze(0)")):
        model(good[0])
    with pytest.raises(ValueError, match=expected):
        model(torch.randn(2, 1, 16, 24))
    with pytest.raises(ValueError, match=expected):
        model(torch.randn(2, 4, 16, 24))
    with pytest.raises(ValueError, match=expected):
        model(torch.randn(2, 3, 24, 16))
    with pytest.raises(ValueError, match=expected):
        model(torch.randn(2, 3, 32, 48))
    with pytest.raises(TypeError, match="float64"):
        model(good.double())
    with pytest.raises(TypeError, match="preprocess"):
        model(Image.fromarray(_rgb_array(16, 24)))
    with pytest.raises(TypeError, match="preprocess"):
        model(_rgb_array(16, 24))


def test_the_test_session_checks_shapes():
    """pyproject.toml turns the jaxtyping checks on for caap_lens; without them this would pass silently."""
    import jaxtyping

    with pytest.raises(jaxtyping.TypeCheckError, match="patch_map"):
        GRID.to_pixels(torch.zeros(24))
