"""Saving and loading results: CAAPResult, WindowSweepResult and Attribution as safetensors + JSON.

Every result here comes from a real run on a small random-init ViT (4x4 patches, 2 blocks). A round
trip must give back every tensor bit for bit (bytes, dtype, shape), the settings, timing and
versions, and a result that still works (pixels, top patches, effect, map_for). Files that are not
results, results of another kind, truncated files and files from a newer format fail with a
`ResultFileError` that says which; nothing is ever unpickled.
"""

from __future__ import annotations

import importlib.metadata
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

import caap_lens
from caap_lens import HookedViT, caap, depth_profile, window_sweep
from caap_lens.attribution import storage
from caap_lens.attribution.result import CAAPResult
from caap_lens.attribution.storage import ResultFileError, load_result, read_meta, save_result
from caap_lens.baselines import attribute
from caap_lens.baselines.base import Attribution
from caap_lens.sweeps import WindowSweepResult


@pytest.fixture(scope="module")
def model() -> HookedViT:
    torch.manual_seed(0)
    return HookedViT.from_timm("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=5)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _regions() -> torch.Tensor:
    region = torch.zeros(3, 4, 4, dtype=torch.bool)
    region[0, :2, :2] = True
    region[1, 2:, :] = True
    region[2, :, 3] = True
    return region


@pytest.fixture(scope="module")
def caap_results(model: HookedViT, images: torch.Tensor) -> dict[str, CAAPResult]:
    def centred(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output.gather(1, target[:, None])[:, 0] - output.mean(1)

    return {
        "patches": caap(model, images, layers=(0, 2)),
        "per_head": caap(model, images, layers=(0, 2), heads=True),
        "per_layer_head": caap(model, images, layers=(0, 2), heads=True, per_layer=True),
        "regions": caap(model, images, layers=(0, 1), region=_regions()),
        "auto_window": caap(model, images, layers="auto"),
        "image_context_callable_score": caap(model, images, layers=(1, 2), context=torch.zeros(1, 3, 32, 32),
                                             score=centred, relative=True),
    }


@pytest.fixture(scope="module")
def sweeps(model: HookedViT, images: torch.Tensor) -> dict[str, WindowSweepResult]:
    return {
        "all": window_sweep(model, images),
        "depth_some_patches": depth_profile(model, images, patches=[0, 5, 15]),  # NaN where not run
    }


@pytest.fixture(scope="module")
def attributions(model: HookedViT, images: torch.Tensor) -> dict[str, Attribution]:
    return {
        "integrated_gradients": attribute("integrated_gradients", model, images, n_steps=8),
        "rollout": attribute("rollout", model, images),
    }


def assert_bit_equal(a: torch.Tensor | None, b: torch.Tensor | None, name: str) -> None:
    assert (a is None) == (b is None), name
    if a is None:
        return
    assert a.dtype == b.dtype and a.shape == b.shape, name
    as_bytes = [t.contiguous().view(torch.uint8).flatten().tolist() for t in (a, b)]
    assert as_bytes[0] == as_bytes[1], name


def json_round(value: Any) -> Any:
    return json.loads(json.dumps(storage.to_json_safe(value)))


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", ["patches", "per_head", "per_layer_head", "regions", "auto_window",
                                  "image_context_callable_score"])
def test_caap_result_round_trip(caap_results: dict[str, CAAPResult], name: str, tmp_path: Path) -> None:
    result = caap_results[name]
    path = result.save(tmp_path / f"{name}.safetensors")
    loaded = CAAPResult.load(path)
    for field in ("map", "targets", "source_score", "context_score", "source_output"):
        assert_bit_equal(getattr(result, field), getattr(loaded, field), field)
    assert loaded.grid == result.grid
    assert loaded.timing == result.timing
    windows = list(getattr(result.settings, "windows", None) or result.settings["windows"])
    expected = json_round({**dict(result.settings), "windows": windows})
    assert json_round(loaded.settings) == expected
    assert loaded.settings["windows"] == windows and all(isinstance(w, tuple) for w in windows)
    assert_bit_equal(result.effect, loaded.effect, "effect")
    if "layers" in result.settings:
        assert loaded.settings["layers"] == result.settings["layers"]
    assert repr(loaded) == repr(result)


def test_loaded_caap_result_behaves(caap_results: dict[str, CAAPResult], tmp_path: Path) -> None:
    result = caap_results["patches"]
    loaded = CAAPResult.load(result.save(tmp_path / "r.safetensors"))
    assert torch.equal(loaded.to_pixels(), result.to_pixels())
    assert torch.equal(loaded.to_pixels("bilinear"), result.to_pixels("bilinear"))
    assert loaded.top_patches(4, image=1) == result.top_patches(4, image=1)
    assert torch.equal(loaded.effect, result.effect)
    assert torch.equal(loaded.recovered, result.recovered)
    assert loaded.settings["context"] == "mean" and loaded.settings["score"] == "logit"


def test_names_stand_in_for_contexts_and_score_callables(caap_results: dict[str, CAAPResult],
                                                         tmp_path: Path) -> None:
    result = caap_results["image_context_callable_score"]
    loaded = CAAPResult.load(result.save(tmp_path / "r.safetensors"))
    assert isinstance(loaded.settings, dict)
    assert loaded.settings["score"] == "centred"
    assert loaded.settings["context"] == result.settings["context"] and isinstance(loaded.settings["context"], str)
    assert loaded.settings["relative"] is True
    assert torch.equal(loaded.effect, loaded.map)  # relative maps are their own effect, also once loaded


@pytest.mark.parametrize("name", ["all", "depth_some_patches"])
def test_window_sweep_round_trip(sweeps: dict[str, WindowSweepResult], name: str, tmp_path: Path) -> None:
    sweep = sweeps[name]
    loaded = WindowSweepResult.load(sweep.save(tmp_path / "sweep.safetensors"))
    for field in ("maps", "context_score", "source_score", "targets", "source_output"):
        assert_bit_equal(getattr(sweep, field), getattr(loaded, field), field)
    assert loaded.windows == sweep.windows and all(isinstance(w, tuple) for w in loaded.windows)
    assert loaded.grid == sweep.grid and loaded.timing == sweep.timing
    for start, stop in sweep.windows:
        assert_bit_equal(loaded.map_for(start, stop), sweep.map_for(start, stop), f"map_for{(start, stop)}")
    with pytest.raises(KeyError):
        loaded.map_for(0, 7)
    if name == "depth_some_patches":
        assert torch.isnan(loaded.maps).any()


@pytest.mark.parametrize("name", ["integrated_gradients", "rollout"])
def test_attribution_round_trip(attributions: dict[str, Attribution], name: str, tmp_path: Path) -> None:
    result = attributions[name]
    loaded = Attribution.load(result.save(tmp_path / "a.safetensors"))
    for field in ("map", "pixels", "targets", "source_output"):
        assert_bit_equal(getattr(result, field), getattr(loaded, field), field)
    assert loaded.method == result.method and loaded.grid == result.grid and loaded.timing == result.timing
    assert loaded.settings == json_round(result.settings)
    assert set(loaded.info) == set(result.info)
    for key, value in result.info.items():
        if isinstance(value, torch.Tensor):
            assert_bit_equal(value, loaded.info[key], f"info.{key}")
        else:
            assert loaded.info[key] == json_round(value)
    assert_bit_equal(result.to_pixels(), loaded.to_pixels(), "to_pixels")
    assert repr(loaded) == repr(result)
    if name == "integrated_gradients":
        assert loaded.pixels is not None and "completeness_error" in loaded.info
    else:
        assert loaded.pixels is None
        assert "pixels" not in safetensors.torch.load_file(str(tmp_path / "a.safetensors"))


def test_none_tensors_are_absent_and_dtypes_kept(tmp_path: Path) -> None:
    grid = caap_lens.PatchGrid(grid_size=(2, 3), patch_size=(4, 4), n_prefix_tokens=2)
    result = CAAPResult(map=torch.randn(1, 2, 3).to(torch.bfloat16), targets=torch.tensor([4]),
                        source_score=torch.tensor([1.5]), context_score=torch.tensor([-0.25], dtype=torch.float64),
                        grid=grid, settings={"layers": (1, 3), "note": ("a", 2)}, timing={"seconds": 0.1})
    path = result.save(tmp_path / "r.safetensors")
    assert set(safetensors.torch.load_file(str(path))) == {"map", "targets", "source_score", "context_score"}
    loaded = CAAPResult.load(path)
    assert loaded.source_output is None and loaded.grid == grid
    assert loaded.map.dtype == torch.bfloat16 and loaded.context_score.dtype == torch.float64
    assert loaded.settings == {"layers": (1, 3), "note": ["a", 2]}  # windows back as tuples, other tuples lists


# --------------------------------------------------------------------------- what the file holds
def test_file_is_safetensors_with_versions_and_model(model: HookedViT, caap_results: dict[str, CAAPResult],
                                                     tmp_path: Path) -> None:
    path = caap_results["patches"].save(tmp_path / "r.safetensors", model=model)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert data[8:9] == b"{" and 8 + n <= len(data)  # the safetensors header: never a pickle or zip
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"][storage.META_KEY])
    assert meta["kind"] == "caap" and meta["format_version"] == storage.FORMAT_VERSION
    assert meta["versions"] == {"caap_lens": caap_lens.__version__, "torch": torch.__version__,
                                "timm": importlib.metadata.version("timm"), "safetensors": safetensors.__version__}
    assert meta["created"].endswith("+00:00")
    assert meta["grid"] == {"grid_size": [4, 4], "patch_size": [8, 8], "n_prefix_tokens": 1}
    info = read_meta(path)["model"]
    assert info["source"] == model.cfg.source and info["source"]
    assert info["weights"] == json_round(getattr(model.cfg, "weights", None))
    assert info["weights_kind"] == getattr(model.cfg, "weights_kind", None)
    assert info["config"] == json_round(model.cfg.to_dict())
    assert info["config"]["n_layers"] == 2 and info["config"]["image_size"] == [32, 32]
    assert "model" not in read_meta(caap_results["patches"].save(tmp_path / "no_model.safetensors"))


def test_weights_origin_recorded_when_the_config_has_one(model: HookedViT, tmp_path: Path) -> None:
    class Cfg:
        source = "my_checkpoint.safetensors"
        weights = {"kind": "checkpoint", "path": "/data/my_checkpoint.safetensors"}

        def to_dict(self) -> dict:
            return {"n_layers": 2, "image_size": (32, 32)}

    class Model:
        cfg = Cfg()

    sweep = WindowSweepResult(maps=torch.zeros(1, 1, 2, 2), windows=[(0, 1)], context_score=torch.zeros(1, 1),
                              source_score=torch.zeros(1), targets=torch.zeros(1, dtype=torch.long))
    meta = read_meta(sweep.save(tmp_path / "s.safetensors", model=Model()), kind="window_sweep")
    assert meta["model"] == {"source": "my_checkpoint.safetensors", "weights": Cfg.weights, "weights_kind": None,
                             "config": {"n_layers": 2, "image_size": [32, 32]}}
    assert meta["grid"] is None and WindowSweepResult.load(tmp_path / "s.safetensors").grid is None


def test_nothing_is_unpickled(caap_results: dict[str, CAAPResult], sweeps: dict[str, WindowSweepResult],
                              attributions: dict[str, Attribution], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [caap_results["per_layer_head"].save(tmp_path / "c.safetensors"),
             sweeps["all"].save(tmp_path / "s.safetensors"),
             attributions["integrated_gradients"].save(tmp_path / "a.safetensors")]

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a result file must never be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    CAAPResult.load(paths[0])
    WindowSweepResult.load(paths[1])
    Attribution.load(paths[2])
    for path in paths:
        assert not path.read_bytes().startswith((b"PK", b"\x80"))  # torch.save's zip, a raw pickle


# ------------------------------------------------------------------------------------- errors
def test_not_a_result_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, these are not tensors")
    with pytest.raises(ResultFileError, match="not a caap_lens result file"):
        CAAPResult.load(text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ResultFileError, match="too short"):
        load_result(empty)
    pickled = tmp_path / "pickled.pt"
    torch.save({"map": torch.zeros(2)}, pickled)
    with pytest.raises(ResultFileError, match="not a caap_lens result file"):
        Attribution.load(pickled)
    checkpoint = tmp_path / "checkpoint.safetensors"
    safetensors.torch.save_file({"head.weight": torch.zeros(2, 2)}, str(checkpoint))
    with pytest.raises(ResultFileError, match="not a caap_lens result.*checkpoint"):
        WindowSweepResult.load(checkpoint)
    with pytest.raises(FileNotFoundError):
        CAAPResult.load(tmp_path / "missing.safetensors")


def test_result_of_another_kind(sweeps: dict[str, WindowSweepResult], caap_results: dict[str, CAAPResult],
                                tmp_path: Path) -> None:
    sweep_file = sweeps["all"].save(tmp_path / "sweep.safetensors")
    with pytest.raises(ResultFileError, match="'window_sweep' result, not a 'caap' one.*WindowSweepResult.load"):
        CAAPResult.load(sweep_file)
    caap_file = caap_results["patches"].save(tmp_path / "caap.safetensors")
    with pytest.raises(ResultFileError, match="'caap' result, not a 'attribution' one.*CAAPResult.load"):
        Attribution.load(caap_file)
    with pytest.raises(ResultFileError, match="not a 'window_sweep' one"):
        WindowSweepResult.load(caap_file)


def _with_meta(path: Path, **changes: Any) -> Path:
    tensors, meta = load_result(path)
    header = json.loads(json.dumps(storage.to_json_safe({**meta, **changes})))
    out = path.with_name("changed.safetensors")
    safetensors.torch.save_file(tensors, str(out), metadata={storage.META_KEY: json.dumps(header)})
    return out


def test_newer_format_and_unknown_kind(caap_results: dict[str, CAAPResult], tmp_path: Path) -> None:
    path = caap_results["patches"].save(tmp_path / "r.safetensors")
    newer = _with_meta(path, format_version=storage.FORMAT_VERSION + 1,
                       versions={"caap_lens": "9.0.0"})
    with pytest.raises(ResultFileError, match=r"newer result format \(2, by caap_lens 9.0.0\).*upgrade"):
        CAAPResult.load(newer)
    unknown = _with_meta(path, kind="embedding")
    with pytest.raises(ResultFileError, match="unknown kind of result 'embedding'"):
        load_result(unknown)
    with pytest.raises(ValueError, match="kind must be one of"):
        save_result(tmp_path / "x.safetensors", {}, {"kind": "embedding"})
    with pytest.raises(ValueError, match="may not set.*versions"):
        save_result(tmp_path / "x.safetensors", {}, {"kind": "caap", "versions": {}})


def test_truncated_file(caap_results: dict[str, CAAPResult], tmp_path: Path) -> None:
    data = caap_results["per_head"].save(tmp_path / "r.safetensors").read_bytes()
    cut_data = tmp_path / "cut_data.safetensors"
    cut_data.write_bytes(data[:-10])
    with pytest.raises(ResultFileError, match="truncated"):
        CAAPResult.load(cut_data)
    cut_header = tmp_path / "cut_header.safetensors"
    cut_header.write_bytes(data[:40])
    with pytest.raises(ResultFileError, match="truncated"):
        CAAPResult.load(cut_header)
    with pytest.raises(ResultFileError, match="truncated"):
        read_meta(cut_header)
