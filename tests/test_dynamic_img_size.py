"""timm's ``dynamic_img_size=True``: any image size, the grid recomputed per call, parity at several sizes.

Three kinds of check:

* **the forward against timm**, family by family (plain and cached, output and every residual stream,
  via `test_parity_timm._check_parity`), at the size the model was built for and at two other,
  non-square sizes;
* **every caap_lens function against a fixed-size reference**: the dynamic model run on 48x40 images must
  give what a fixed-size model built by timm at 48x40 gives (timm resamples its position embedding with
  its own ``resample_abs_pos_embed``), map for map, bit for bit, with the 6x5 grid on the result;
* **the view** `HookedViT.at_size` shares weights, hook points, the hook-nesting counter and the lock
  with the model, and bad sizes get errors that say what to do.
"""

from __future__ import annotations

import threading

import pytest
import torch

from caap_lens import HookedViT, caap
from caap_lens.attribution.reference import caap_naive
from caap_lens.baselines import METHODS, attribute
from caap_lens.config import HookedViTConfig
from caap_lens.metrics.curves import deletion_curve, insertion_curve, perturbation_curve
from caap_lens.model.sizing import at_image_size
from caap_lens.report import build_record
from caap_lens.sweeps import context_sweep, depth_profile, score_sweep, window_sweep

from conftest import get_timm, make_timm, no_hooks_left, perturb_
from test_parity_timm import _check_parity

FAMILIES = {  # timm name, options, (native size, two other sizes)
    "vit": ("vit_tiny_patch16_224", {}, [(32, 32), (48, 32), (16, 64)]),
    "deit3": ("deit3_small_patch16_224", {}, [(32, 32), (64, 48), (32, 16)]),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {}, [(42, 42), (56, 28), (28, 70)]),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, [(32, 32), (48, 64), (16, 32)]),
    "clip": ("vit_base_patch16_clip_224", {}, [(32, 32), (64, 32), (32, 48)]),
    "siglip_map": ("vit_base_patch16_siglip_224", {"num_classes": 0}, [(32, 32), (48, 32), (16, 48)]),
    "in_chans1": ("vit_tiny_patch16_224", {"in_chans": 1}, [(32, 32), (32, 64), (48, 16)]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_matches_timm_at_three_sizes(family, record_diff):
    name, options, sizes = FAMILIES[family]
    timm_model = make_timm(name, img_size=sizes[0], dynamic_img_size=True, **options)
    model = HookedViT.from_timm(timm_model)
    assert model.cfg.dynamic_img_size and model.any_size
    assert model.cfg.image_size == sizes[0]
    for size in sizes:
        gen = torch.Generator().manual_seed(sum(size))
        x = torch.randn(2, model.cfg.n_channels, *size, generator=gen)
        _check_parity(timm_model, model, x, f"dynamic {family} at {size[0]}x{size[1]}", record_diff)
        with torch.no_grad():  # the plain forward is bit for bit, as for fixed-size models
            assert torch.equal(model(x), timm_model(x)), (family, size)


# ------------------------------------------------------------------------ the library at another size
SIZE = (48, 40)  # a 6x5 grid on a model built for 32x32 (4x4)


def dynamic_and_fixed(num_classes: int = 5) -> tuple[HookedViT, HookedViT]:
    """(dynamic model built for 32x32, fixed-size model built by timm at 48x40 from the same weights)."""
    timm = get_timm()
    from timm.layers import resample_abs_pos_embed

    dynamic_timm = make_timm("vit_tiny_patch16_224", depth=3, img_size=32, patch_size=8, num_classes=num_classes,
                             dynamic_img_size=True)
    fixed_timm = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=SIZE, patch_size=8,
                                   num_classes=num_classes).eval()
    state = dict(dynamic_timm.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=(6, 5), old_size=(4, 4),
                                                num_prefix_tokens=1)
    fixed_timm.load_state_dict(state)
    return HookedViT.from_timm(dynamic_timm), HookedViT.from_timm(fixed_timm)


@pytest.fixture(scope="module")
def models() -> tuple[HookedViT, HookedViT]:
    return dynamic_and_fixed()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(5))


def _same(a, b) -> None:
    assert a.shape == b.shape
    assert torch.equal(a, b), (a - b).abs().max()


CAAP_CALLS = {
    "default": {},
    "window": {"layers": (1, 2), "context": "blur"},
    "heads": {"layers": (1, 2), "heads": True},
    "heads_per_layer": {"layers": (0, 2), "heads": [0, 2], "per_layer": True},
    "region": {"layers": (1, 3), "region": torch.arange(30).reshape(6, 5) < 12},
    "mean_activation": {"context": "mean_activation", "relative": True},
    "auto": {"layers": "auto"},
    "bf16": {"dtype": torch.bfloat16},
}


@pytest.mark.parametrize("call", list(CAAP_CALLS))
def test_caap_follows_the_images_grid(models, x, call):
    dynamic, fixed = models
    a, b = caap(dynamic, x, **CAAP_CALLS[call]), caap(fixed, x, **CAAP_CALLS[call])
    assert a.grid == b.grid and a.grid.grid_size == (6, 5)
    _same(a.map, b.map)
    _same(a.context_score, b.context_score)
    assert no_hooks_left(dynamic)


def test_sweeps_follow_the_images_grid(models, x):
    dynamic, fixed = models
    for fn, kwargs in ((window_sweep, {"windows": [(0, 1), (1, 3), (0, 3)]}), (depth_profile, {}),
                       (depth_profile, {"patches": [0, 7, 29]})):
        a, b = fn(dynamic, x, **kwargs), fn(fixed, x, **kwargs)
        assert a.grid == b.grid
        assert torch.equal(a.maps.nan_to_num(-7.0), b.maps.nan_to_num(-7.0))
    for fn in (context_sweep, score_sweep):
        a, b = fn(dynamic, x), fn(fixed, x)
        assert list(a) == list(b)
        for key in a:
            assert a[key].grid == b[key].grid
            _same(a[key].map, b[key].map)
    _same(caap_naive(dynamic, x, layers=(1, 2)), caap_naive(fixed, x, layers=(1, 2)))


@pytest.mark.parametrize("direct", [False, True], ids=["attribute", "direct"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_baseline_follows_the_images_grid(models, x, method, direct):
    """Through `attribute`, and called directly as ``METHODS[name](model, images, targets)``."""
    dynamic, fixed = models
    options = {"rise": {"n_masks": 40}, "integrated_gradients": {"n_steps": 8}}.get(method, {})
    if direct:
        fn, targets = METHODS[method], torch.tensor([1, 3])
        a, b = fn(dynamic, x, targets, **options), fn(fixed, x, targets, **options)
        _same(a[0], b[0])
        assert a[0].shape == (2, 6, 5)
        return
    a, b = attribute(method, dynamic, x, **options), attribute(method, fixed, x, **options)
    assert a.grid == b.grid and a.map.shape == (2, 6, 5)
    _same(a.map, b.map)
    if b.pixels is not None:
        _same(a.pixels, b.pixels)


def test_metrics_and_report_follow_the_images_grid(models, x):
    dynamic, fixed = models
    maps = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(1))
    for fn, kwargs in ((deletion_curve, {"steps": 5}), (insertion_curve, {}), (perturbation_curve, {})):
        a, b = fn(dynamic, x, maps, **kwargs), fn(fixed, x, maps, **kwargs)
        _same(a.y, b.y)
    result = caap(dynamic, x)
    record = build_record(dynamic, x, result, image_name="wide.png")
    assert record.grid.grid_size == (6, 5) and record.map.shape == (6, 5)
    assert record.model["image_size"] == list(SIZE)


def test_result_of_another_size_saves_and_loads(models, x, tmp_path):
    result = caap(models[0], x, layers=(1, 2))
    loaded = type(result).load(result.save(tmp_path / "wide.safetensors"))
    assert loaded.grid == result.grid and torch.equal(loaded.map, result.map)


def test_hooks_are_removed_after_an_error_at_another_size(models, x):
    dynamic = models[0]

    def broken(output, target):
        raise RuntimeError("broken score")

    with pytest.raises(RuntimeError, match="broken score"):
        caap(dynamic, x, score=broken)
    assert no_hooks_left(dynamic)


# ------------------------------------------------------------------------------------------ the view
def _dynamic_model() -> HookedViT:
    cfg = HookedViTConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, image_size=16, patch_size=8, n_classes=3,
                          dynamic_img_size=True, data_config={"crop_pct": 0.875})
    return HookedViT(cfg)


def test_view_shares_weights_hooks_and_lock():
    model = _dynamic_model()
    view = model.at_size((24, 40))
    assert view.cfg.image_size == (24, 40) and view.cfg.pos_embed_grid == (2, 2) and view.cfg.n_tokens == 16
    assert view.cfg.data_config["input_size"] == (3, 24, 40) and view.cfg.data_config["crop_pct"] == 0.875
    assert view.lock is model.lock and view.hook_dict is model.hook_dict
    assert all(p is q for p, q in zip(view.parameters(), model.parameters()))
    assert list(view.state_dict()) == list(model.state_dict())
    assert model.at_size((16, 16)) is model and view.at_size(16) is model and view.at_size((24, 40)) is view
    assert view.at_size((8, 8)).cfg.image_size == (8, 8)
    fired = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: fired.append(tuple(a.shape)))]):
        with view.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: None)]):
            assert model.context_level == view.context_level == 2
        assert len(model.list_hooks()) == 1  # the inner context removed only its own hook
        view(torch.randn(1, 3, 24, 40))
    assert fired == [(1, 16, 16)] and no_hooks_left(model)
    with torch.no_grad():
        model.blocks[0].attn.W_O.add_(1.0)  # a weight changed on the model is changed in the view
    assert torch.equal(view.blocks[0].attn.W_O, model.blocks[0].attn.W_O)
    assert "view at this size" in repr(view) and "any image size" in repr(model)


def test_view_runs_like_the_model_and_takes_only_its_size():
    model = _dynamic_model()
    view = model.at_size((24, 40))
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        assert torch.equal(view(x), model(x))
        resid = model(x, stop_at_layer=1)  # the model takes a residual stream of any grid, the view its own
        assert torch.equal(model(resid, start_at_layer=1), view(resid, start_at_layer=1))
    with pytest.raises(ValueError, match=r"\[batch, 3, 24, 40\].*dynamic-size model itself"):
        view(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="start_at_layer=1 expects"):
        view(torch.randn(1, 5, 16), start_at_layer=1)
    assert view.preprocess(torch.rand(1, 3, 30, 30)).shape == (1, 3, 24, 40)


def test_view_is_thread_safe_with_the_model():
    model = _dynamic_model()
    view = model.at_size((24, 40))
    errors = []

    def run(m, size):
        try:
            for _ in range(5):
                caap(m, torch.randn(1, 3, *size), layers=(0, 1))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(model, (16, 16))), threading.Thread(target=run, args=(view, (24, 40)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and no_hooks_left(model)


@pytest.mark.parametrize("size", [(20, 16), (16, 12), (0, 16)])
def test_sizes_that_are_not_whole_patches_are_refused(size):
    model = _dynamic_model()
    with pytest.raises(ValueError, match=r"not a whole number of \(8, 8\) patches.*multiples of 8"):
        model(torch.randn(1, 3, *size))
    with pytest.raises(ValueError, match="not a whole number"):
        model.at_size(size)


def test_a_fixed_size_model_says_how_to_run_other_sizes():
    fixed = HookedViT(HookedViTConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, image_size=16, patch_size=8))
    with pytest.raises(ValueError, match=r"runs at \(16, 16\) only.*dynamic_img_size=True"):
        fixed.at_size((24, 24))
    with pytest.raises(ValueError, match="dynamic_img_size=True to run it at other sizes"):
        caap(fixed, torch.randn(1, 3, 24, 24))
    assert at_image_size(fixed, torch.randn(1, 3, 24, 24)) is fixed  # check_images then says what to do


def test_config_round_trips_and_checks_the_new_fields():
    cfg = _dynamic_model().at_size((24, 40)).cfg
    assert HookedViTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.n_pos_embed == 5 and cfg.learned_grid == (2, 2)
    with pytest.raises(ValueError, match="pos_embed_grid must be positive"):
        HookedViTConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=8, image_size=8, patch_size=4, pos_embed_grid=(0, 2))


def test_a_model_without_at_size_gets_a_clear_error():
    class Wrapper:
        cfg = _dynamic_model().cfg

    with pytest.raises(TypeError, match="no at_size"):
        at_image_size(Wrapper(), torch.randn(1, 3, 24, 24))


def test_fixed_size_conversion_is_unchanged():
    timm_model = perturb_(get_timm().create_model("vit_tiny_patch16_224", pretrained=False, depth=1,
                                                  img_size=32).eval())
    model = HookedViT.from_timm(timm_model)
    assert not model.cfg.dynamic_img_size and model.cfg.pos_embed_grid is None
    with pytest.raises(ValueError, match=r"expected images \[batch, 3, 32, 32\]"):
        model(torch.randn(1, 3, 48, 48))


def test_transformer_lens_patching_runs_on_a_view(models, x):
    """TransformerLens's own patching helper on ``model.at_size``: equals caap_lens's CAAP at that size."""
    from transformer_lens import patching

    dynamic = models[0]
    view = dynamic.at_size(SIZE)
    source, context = x[:1], x[1:]
    with torch.no_grad():
        _, clean = view.run_with_cache(source)
        tl = patching.get_act_patch_resid_pre(view, context, clean, lambda logits: logits[0, 2],
                                              index_axis_names=None, index_df=view.patching_index("layer", "pos"))
    tl = tl.reshape(view.cfg.n_layers, view.cfg.n_tokens)
    result = caap(dynamic, source, target=2, layers=(1, 2), context=context)
    assert (tl[1, 1:] - result.map[0].flatten()).abs().max() < 1e-5


def test_docs_example_runs():
    """The runnable example of the "Any image size" section of docs/howto/own-model.md."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "howto" / "own-model.md").read_text(encoding="utf-8")
    section = text[text.index("### Any image size"):]
    section = section[:section.index("\n#", 1)]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 1
    names: dict = {}
    exec(compile(blocks[0], "own-model.md", "exec"), names)
    assert names["result"].map.shape == (1, 4, 8) and names["result"].grid.grid_size == (4, 8)
    assert names["model"].at_size((64, 128)).cfg.n_tokens == 33


def test_an_evaluation_runs_on_a_view_and_refuses_tensors_of_another_size(tmp_path):
    """`evaluate` on ``model.at_size(...)`` gives the fixed-size model's table (32x32 scenes and their masks
    preprocessed to 48x40); the model itself refuses a normalised tensor of another size, saying what to do."""
    from caap_lens.evaluation import evaluate
    from caap_lens.evaluation.execution import _preprocess
    from caap_lens.evaluation.sources import SceneSource

    from test_evaluation import FakeScenes, plan_for, table_of

    dynamic, fixed = dynamic_and_fixed(num_classes=10)
    source = SceneSource(FakeScenes(3), name="fake")
    plan = plan_for(metrics=["deletion", "pointing", "auroc"], chunk=3)
    tables = [table_of(evaluate(m, source, plan, tmp_path / name, progress=False, log=lambda s: None).results)
              for name, m in (("view", dynamic.at_size(SIZE)), ("fixed", fixed))]
    rows = [t["rows"] for t in tables]
    assert rows[0] == rows[1] and len(rows[0]) == 3  # caap, rollout, random
    with pytest.raises(ValueError, match=r"evaluation runs at the model's image size \(32, 32\).*at_size"):
        _preprocess(dynamic, torch.randn(3, *SIZE))
