"""`model.preprocess` equals timm's own eval transform (``create_transform(**resolve_data_config(model=m))``).

Random-init timm models (no download); PIL images of several shapes and modes. A converted model records
timm's data config on ``cfg.data_config``; models without one keep the plain resize.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import get_timm
from PIL import Image

from caap_lens import HookedViT, HookedViTConfig

# id -> (timm name, timm kwargs, what its pretrained config says)
MODELS = {
    "vit_s16": ("vit_small_patch16_224", {}, dict(crop_pct=0.9, interpolation="bicubic", mean=(0.5,) * 3)),
    "dinov2_s14": ("vit_small_patch14_dinov2", {}, dict(crop_pct=1.0, interpolation="bicubic",
                                                         mean=(0.485, 0.456, 0.406))),
    "clip_b16": ("vit_base_patch16_clip_224.openai", {}, dict(crop_pct=0.9, interpolation="bicubic",
                                                              mean=(0.48145466, 0.4578275, 0.40821073))),
    "deit3_s16": ("deit3_small_patch16_224", {}, dict(crop_pct=0.9, interpolation="bicubic",
                                                      mean=(0.485, 0.456, 0.406))),
}
_MODELS: dict[str, tuple[torch.nn.Module, HookedViT]] = {}


def _models(key: str) -> tuple[torch.nn.Module, HookedViT]:
    if key not in _MODELS:
        name, kwargs, _ = MODELS[key]
        timm_model = get_timm().create_model(name, depth=1, **kwargs).eval()
        _MODELS[key] = (timm_model, HookedViT.from_timm(timm_model))
    return _MODELS[key]


def _timm_data():
    data = get_timm().data  # through caap_lens's import_timm: never a bare `import timm`
    return data.create_transform, data.resolve_data_config


def _photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth colour field with noise and edges (resampling has something to do)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(7 * xx), np.cos(5 * yy), np.sin(3 * (xx + yy))], -1) * 100 + 128
    base[height // 3 : height // 2, width // 4 : width // 2] = (250, 10, 40)
    rgb = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA")
    return image.convert(mode)


IMAGES = {"512x600": (512, 600, "RGB"), "300x200": (300, 200, "RGB"), "224x224": (224, 224, "RGB"),
          "gray_300x260": (300, 260, "L"), "rgba_260x300": (260, 300, "RGBA"), "palette_333x250": (333, 250, "P")}


@pytest.mark.parametrize("image_id", sorted(IMAGES))
@pytest.mark.parametrize("key", sorted(MODELS))
def test_preprocess_equals_timms_eval_transform(key, image_id, record_diff):
    create_transform, resolve_data_config = _timm_data()
    timm_model, model = _models(key)
    transform = create_transform(**resolve_data_config(model=timm_model))
    width, height, mode = IMAGES[image_id]
    image = _photo(width, height, mode)
    expected = transform(image.convert("RGB"))[None]
    ours = model.preprocess(image)
    diff = float((ours - expected).abs().max())
    record_diff(key, f"prep {image_id}", diff)
    assert ours.shape == (1, 3, *model.cfg.image_size) and ours.dtype == torch.float32
    assert diff == 0.0


@pytest.mark.parametrize("key", sorted(MODELS))
def test_data_config_is_timms(key):
    _, resolve_data_config = _timm_data()
    timm_model, model = _models(key)
    expected = dict(MODELS[key][2])
    cfg = model.cfg
    resolved = resolve_data_config(model=timm_model)
    assert cfg.data_config == {k: tuple(v) if isinstance(v, tuple) else v for k, v in resolved.items()}
    for name, value in expected.items():
        assert cfg.data_config[name] == pytest.approx(value)
    assert cfg.data_config["mean"] == cfg.image_mean and cfg.data_config["std"] == cfg.image_std
    assert cfg.data_config["input_size"] == (cfg.n_channels, *cfg.image_size)


def test_uint8_arrays_and_tensors_equal_the_pil_path():
    _, model = _models("vit_s16")
    image = _photo(300, 200)
    expected = model.preprocess(image)
    array = np.asarray(image)
    torch.testing.assert_close(model.preprocess(array), expected, atol=0, rtol=0)
    torch.testing.assert_close(model.preprocess(torch.from_numpy(array.copy()).permute(2, 0, 1)), expected,
                               atol=0, rtol=0)
    gray = _photo(300, 200, "L")
    torch.testing.assert_close(model.preprocess(np.asarray(gray)), model.preprocess(gray), atol=0, rtol=0)
    # a list of images of different shapes is one batch, each image transformed as timm would
    batch = model.preprocess([image, _photo(512, 600), gray])
    assert batch.shape == (3, 3, 224, 224)
    torch.testing.assert_close(batch[:1], expected, atol=0, rtol=0)


def test_float_pixels_use_the_same_transforms_on_tensors():
    _, model = _models("vit_s16")
    smooth = np.stack([*np.meshgrid(np.linspace(0, 1, 300), np.linspace(0, 1, 200)), np.full((200, 300), 0.5)], -1)
    pil = model.preprocess(Image.fromarray((smooth * 255).round().astype(np.uint8)))
    ours = model.preprocess(torch.from_numpy(smooth).float().permute(2, 0, 1))
    assert ours.shape == pil.shape
    assert float((ours - pil).abs().max()) < 0.05  # PIL rounds to uint8 and resamples in 8 bits; tensors do not


def test_a_dinov2_at_another_size_is_cropped_at_its_own_size():
    create_transform, resolve_data_config = _timm_data()
    timm_model = get_timm().create_model("vit_small_patch14_dinov2", depth=1, img_size=224).eval()
    model = HookedViT.from_timm(timm_model)
    assert resolve_data_config(model=timm_model)["input_size"] == (3, 518, 518)  # timm's says its pretrained size
    assert model.cfg.data_config["input_size"] == (3, 224, 224)
    image = _photo(512, 600)
    config = {**resolve_data_config(model=timm_model), "input_size": (3, 224, 224)}
    torch.testing.assert_close(model.preprocess(image), create_transform(**config)(image)[None], atol=0, rtol=0)
    assert model(model.preprocess(image)).shape == (1, 384)


def test_normalised_tensors_are_used_as_given():
    from caap_lens.attribution.engine import prepare_images

    _, model = _models("vit_s16")
    x = model.preprocess(_photo(300, 200))
    assert torch.equal(prepare_images(model, x), x)  # not cropped or normalised again


def test_resize_false_only_normalises():
    _, model = _models("vit_s16")
    image = _photo(224, 224)
    plain = (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(model.preprocess(image, resize=False), plain[None], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="the model takes"):
        model.preprocess(_photo(300, 200), resize=False)


def test_models_without_a_timm_data_config_keep_the_plain_resize():
    cfg = HookedViTConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, image_size=32, patch_size=8, n_classes=3,
                          image_mean=(0.5,) * 3, image_std=(0.25,) * 3)
    assert cfg.data_config is None
    model = HookedViT(cfg)
    image = _photo(48, 40)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
    expected = (F.interpolate(pixels, size=(32, 32), mode="bilinear", antialias=True, align_corners=False) - 0.5) / 0.25
    torch.testing.assert_close(model.preprocess(image), expected, atol=1e-6, rtol=0)
    bundled = HookedViT.from_pretrained("fashion-scenes-vit")
    assert bundled.cfg.data_config is None  # trained here on 64-px scenes: resized, never cropped


def test_data_config_round_trips_and_is_checked():
    _, model = _models("clip_b16")
    cfg = model.cfg
    again = HookedViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.data_config == cfg.data_config
    data = cfg.to_dict()
    with pytest.raises(ValueError, match="differ from image_mean"):
        HookedViTConfig.from_dict({**data, "data_config": {**data["data_config"], "mean": (0.5, 0.5, 0.5)}})
    with pytest.raises(ValueError, match="input_size"):
        HookedViTConfig.from_dict({**data, "data_config": {**data["data_config"], "input_size": (3, 448, 448)}})
    with pytest.raises(ValueError, match="unknown data_config keys"):
        HookedViTConfig.from_dict({**data, "data_config": {"crop": 0.9}})


@pytest.mark.parametrize("channels", [1, 4])
def test_models_with_other_channel_counts(channels):
    model = HookedViT.from_timm("vit_tiny_patch16_224", depth=1, in_chans=channels)
    assert model.cfg.data_config["input_size"] == (channels, 224, 224)
    array = np.random.default_rng(0).integers(0, 256, (200, 300, channels), dtype=np.uint8)
    x = model.preprocess(array)  # 1 channel: a PIL "L" image, as timm; 4: the transforms on the tensor
    assert x.shape == (1, channels, 224, 224) and model(x).shape == (1, 1000)
    if channels == 1:
        torch.testing.assert_close(model.preprocess(Image.fromarray(array[..., 0])), x, atol=0, rtol=0)


@pytest.mark.parametrize("key", ["vit_s16", "dinov2_s14"])
@pytest.mark.parametrize("shape", [(300, 200), (180, 420), (224, 224)])
def test_a_mask_follows_the_image_through_resize_and_crop(key, shape):
    """`preprocess_mask` moves a mask where `preprocess` moves the image's pixels: a white rectangle on
    black, preprocessed as an image, is bright exactly where its mask, preprocessed as a mask, is True
    (up to the resampled edge)."""
    from caap_lens.preprocessing import preprocess_mask

    _, model = _models(key)
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    mask[h // 5 : h // 2, w // 3 : w - w // 6] = True
    pixels = np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=-1)
    x = model.preprocess(Image.fromarray(pixels))[0]
    mean, std = torch.tensor(model.cfg.image_mean).view(3, 1, 1), torch.tensor(model.cfg.image_std).view(3, 1, 1)
    bright = ((x * std + mean).mean(0) > 0.5)
    moved = preprocess_mask(mask, model.cfg.image_size, model.cfg.data_config)
    edge = F.max_pool2d(moved[None].float(), 5, 1, 2)[0].bool() & ~(-F.max_pool2d(-moved[None].float(), 5, 1, 2)[0]).bool()
    assert (bright == moved)[~edge].all()  # away from the edge: the same pixels
    squashed = preprocess_mask(mask, model.cfg.image_size)  # no data config: a plain stretch
    if shape[0] != shape[1] or model.cfg.data_config["crop_pct"] < 1:
        assert (squashed != bright).float().mean() > 0.02  # the crop matters: a stretched mask would be wrong
