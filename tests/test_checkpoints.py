"""Checkpoints from Python: ``HookedViT.from_timm(arch, checkpoint_path=...)`` reads the class count,
strips the usual prefixes and wrappers, and says in one line what does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import images_for, make_timm

from caap_lens import HookedViT
from caap_lens.converters import CheckpointMismatchError, checkpoint_num_classes, read_checkpoint

ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A perturbed 7-class timm model: the 'fine-tune' whose checkpoints the tests write."""
    return make_timm(ARCH, seed=5, num_classes=7)


def _state(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _layouts(trained: torch.nn.Module) -> dict[str, tuple[str, object]]:
    return {
        "plain": (".safetensors", _state(trained)),
        "data_parallel": (".pth", _state(trained, "module.")),
        "prefixed_safetensors": (".safetensors", _state(trained, "model.")),
        "lightning": (".ckpt", {"epoch": 3, "global_step": 120,
                                "state_dict": {**_state(trained, "model."), "criterion.pos_weight": torch.ones(7)}}),
        "compiled_in_lightning": (".ckpt", {"state_dict": _state(trained, "model._orig_mod.")}),
        "ema_wrapper": (".pth", {"model_ema": _state(trained), "model": {"head.weight": torch.zeros(2, 2)}}),
    }


@pytest.mark.parametrize("layout", ["plain", "data_parallel", "prefixed_safetensors", "lightning",
                                    "compiled_in_lightning", "ema_wrapper"])
def test_checkpoint_layouts_load_with_the_class_count_read_from_them(tmp_path, trained, layout):
    suffix, state = _layouts(trained)[layout]
    path = _save(state, tmp_path / f"finetune{suffix}")
    assert checkpoint_num_classes(path) == 7
    assert set(read_checkpoint(path)) == set(trained.state_dict())
    model = HookedViT.from_timm(ARCH, checkpoint_path=str(path), depth=2)  # no num_classes: 7 from the file
    assert model.cfg.n_classes == 7 and model.class_names is None
    x = images_for(model, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), atol=1e-5, rtol=0)
    assert model.cfg.weights_kind == "checkpoint"
    assert model.cfg.weights == f"checkpoint: {path.resolve()}"


def test_an_explicit_num_classes_wins_and_a_wrong_one_is_named(tmp_path, trained):
    path = _save(_state(trained), tmp_path / "finetune.safetensors")
    assert HookedViT.from_timm(ARCH, checkpoint_path=str(path), num_classes=7, depth=2).cfg.n_classes == 7
    with pytest.raises(CheckpointMismatchError) as err:
        HookedViT.from_timm(ARCH, checkpoint_path=str(path), num_classes=5, depth=2)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {path} does not fit {ARCH}: 2 of another shape (head.weight: "
                              "checkpoint [7, 192], model [5, 192], head.bias: checkpoint [7], model [5])")
    assert "leave num_classes out" in message
    assert isinstance(err.value, ValueError)  # what the CLI turns into a one-line exit 2


def test_missing_and_unexpected_keys_in_one_line(tmp_path, trained):
    state = _state(trained)
    del state["head.weight"], state["head.bias"]
    state["fc.weight"] = torch.zeros(3, 3)
    path = _save(state, tmp_path / "my.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        HookedViT.from_timm(ARCH, checkpoint_path=str(path), num_classes=7, depth=2)
    assert str(err.value) == (f"checkpoint {path} does not fit {ARCH}: 2 missing (head.weight, head.bias), "
                              "1 unexpected (fc.weight)")
    deeper = _save(_state(trained), tmp_path / "deep.pth")
    with pytest.raises(CheckpointMismatchError, match=r"12 missing \(blocks\.2\.norm1\.weight, .*, \.\.\. 8 more\)$"):
        HookedViT.from_timm(ARCH, checkpoint_path=str(deeper), depth=3)


def test_a_checkpoint_without_a_vit_is_refused(tmp_path):
    path = _save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="holds no ViT"):
        HookedViT.from_timm(ARCH, checkpoint_path=str(path), depth=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HookedViT.from_timm(ARCH, checkpoint_path=str(tmp_path / "missing.pth"), depth=2)


def test_from_pretrained_points_timm_names_and_files_to_from_timm():
    with pytest.raises(ValueError) as err:
        HookedViT.from_pretrained("vit_small_patch16_224")
    message = str(err.value)
    assert "bundled models: fashion-scenes-dinov2, fashion-scenes-vit" in message
    assert "HookedViT.from_timm('vit_small_patch16_224', pretrained=True)" in message
    assert "checkpoint_path=" in message
    with pytest.raises(ValueError, match=r"from_timm\('vit_small_patch16_224.augreg_in21k', pretrained=True\)"):
        HookedViT.from_pretrained("vit_small_patch16_224.augreg_in21k")
    with pytest.raises(ValueError, match=r"looks like a checkpoint file: use HookedViT.from_timm\(ARCH, "):
        HookedViT.from_pretrained("my_finetune.safetensors")
    with pytest.raises(ValueError, match="no bundled model named 'nonsense'.*from_timm"):
        HookedViT.from_pretrained("nonsense")


def test_a_hugging_face_state_dict_points_to_from_hf(tmp_path):
    state = {"vit.embeddings.patch_embeddings.projection.weight": torch.zeros(4, 3, 16, 16),
             "classifier.weight": torch.zeros(3, 4)}
    path = _save(state, tmp_path / "model.pth")
    with pytest.raises(ValueError, match=r"holds no ViT .*Hugging Face state dict.*HookedViT.from_hf"):
        HookedViT.from_timm(ARCH, checkpoint_path=str(path), depth=2)
    with pytest.raises(CheckpointMismatchError, match="Hugging Face state dict"):
        HookedViT.from_timm(ARCH, checkpoint_path=str(path), depth=2, num_classes=3)
