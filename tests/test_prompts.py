"""Text prompts as CAAP targets (`caap_lens.attribution.prompts`) on a random-init Hugging Face CLIP.

The CLIP model is built from a small local config (no download) with a byte-level CLIP tokenizer
written to a temporary folder. The text side is checked against ``CLIPModel.get_text_features``
itself; the image side is a HookedViT that outputs the projection space: the CLIP model's own
vision tower through ``HookedViT.from_hf`` where that exists (checked against
``get_image_features``), else a timm CLIP image tower with a head of the projection's width.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from caap_lens.attribution.engine import caap
from caap_lens.attribution.prompts import TextPrompts, encode_prompts, hf_text_encoder, load_text_encoder
from caap_lens.attribution.scores import embedding_similarity
from caap_lens.model.hooked_vit import HookedViT

PROMPTS = ["a photo of a dog", "a photo of a cat", "a diagram", "an empty street"]
PROJ = 16  # the projection width both towers output


def _transformers():
    from caap_lens._timm import import_timm

    import_timm()  # the torchvision work-around, before transformers imports it
    return pytest.importorskip("transformers")


def _tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single bytes (no merges): real CLIP tokenisation, tiny vocabulary."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(chars))}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(sorted(chars))})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return _transformers().CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """``(CLIPModel, tokenizer, saved folder)``: random init from a small config, perturbed biases."""
    tr = _transformers()
    folder = tmp_path_factory.mktemp("clip")
    tok = _tokenizer(folder)
    ids = dict(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    cfg = tr.CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=PROJ,
    )
    torch.manual_seed(0)
    model = tr.CLIPModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    saved = folder / "clip_model"
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    return model, tok, saved


def _image_model(clip_model):
    """A HookedViT whose output is ``PROJ``-d: the CLIP vision tower via from_hf, else a timm tower."""
    if hasattr(HookedViT, "from_hf"):
        return HookedViT.from_hf(clip_model), True  # its image tower, visual_projection as the head
    torch.manual_seed(1)
    model = HookedViT.from_timm("vit_base_patch16_clip_224", pretrained=False, depth=3, embed_dim=32, num_heads=2,
                                img_size=32, patch_size=8, num_classes=PROJ)
    return model, False


@pytest.fixture(scope="module")
def towers(clip):
    clip_model, tok, _ = clip
    model, from_hf = _image_model(clip_model)
    return model, TextPrompts(PROMPTS, clip_model, tok), from_hf


def _images(n=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def test_embeddings_are_clip_text_features_normalised(clip):
    model, tok, _ = clip
    prompts = TextPrompts(PROMPTS, model, tok)
    with torch.no_grad():
        tokens = tok(PROMPTS, padding=True, return_tensors="pt")
        ref = model.get_text_features(**tokens)
        ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
        ref = ref / ref.norm(dim=-1, keepdim=True)  # as CLIPModel.forward normalises text_embeds
    assert prompts.embeddings.shape == (len(PROMPTS), PROJ)
    torch.testing.assert_close(prompts.embeddings, ref, rtol=0, atol=1e-6)
    # the prompts differ, so the embeddings do (the check above cannot pass on a constant encoder)
    assert (prompts.embeddings[0] - prompts.embeddings[1]).abs().max() > 1e-3
    # CLIP's own zero-shot logits rank the prompts as the similarities do
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=x)
        image = model.get_image_features(pixel_values=x)
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    assert prompts.predict(image).tolist() == logits.logits_per_image.argmax(-1).tolist()


def test_saved_folder_and_callable_give_the_same_embeddings(clip):
    model, tok, saved = clip
    ref = TextPrompts(PROMPTS, model, tok).embeddings
    torch.testing.assert_close(encode_prompts(PROMPTS, saved), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(encode_prompts(PROMPTS, load_text_encoder(saved)), ref, rtol=0, atol=1e-6)
    raw = hf_text_encoder(model, tok)
    torch.testing.assert_close(TextPrompts(PROMPTS, raw).embeddings, ref, rtol=0, atol=1e-6)


@pytest.mark.skipif(not hasattr(HookedViT, "from_hf"), reason="HookedViT.from_hf is not there yet")
def test_image_tower_outputs_clip_image_features(clip, towers):
    clip_model, _, _ = clip
    model, _, _ = towers
    x = _images()
    with torch.no_grad():
        ref = clip_model.get_image_features(pixel_values=x)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_predicted_is_the_best_matching_prompt(towers):
    model, prompts, _ = towers
    x = _images(4)
    with torch.no_grad():
        out = model(x)
    sims = F.cosine_similarity(out[:, None, :], prompts.embeddings[None], dim=-1)
    result = caap(model, x, score=prompts, layers=(1, 2))  # target="predicted" by default
    assert result.targets.tolist() == sims.argmax(-1).tolist()
    torch.testing.assert_close(result.source_score, sims.max(-1).values, rtol=0, atol=1e-5)


def test_names_map_to_indices(towers):
    model, prompts, _ = towers
    x = _images(2)
    by_name = caap(model, x, target="a photo of a cat", score=prompts, layers=(1, 2))
    assert by_name.targets.tolist() == [1, 1]
    per_image = caap(model, x, target=["An Empty Street ", 0], score=prompts, layers=(1, 2))
    assert per_image.targets.tolist() == [3, 0]
    by_index = caap(model, x, target=1, score=prompts, layers=(1, 2))
    torch.testing.assert_close(by_index.map, by_name.map, rtol=0, atol=0)
    assert by_name.settings["targets"] == PROMPTS and by_name.settings["score"] == "prompt_similarity"


def test_bad_names_and_indices_say_what_the_prompts_are(towers):
    model, prompts, _ = towers
    with pytest.raises(ValueError, match="unknown prompt 'a photo of a horse'.*'a photo of a dog', 'a photo of a cat'"):
        caap(model, _images(1), target="a photo of a horse", score=prompts, layers=(1, 2))
    with pytest.raises(ValueError, match="out of range for 4 targets"):
        caap(model, _images(1), target=4, score=prompts, layers=(1, 2))
    with pytest.raises(ValueError, match="512-d"):
        TextPrompts.from_embeddings(["a", "b"], torch.randn(2, 512))(torch.randn(1, PROJ), torch.tensor([0]))


def test_map_equals_explicit_embedding_similarity(clip, towers):
    clip_model, tok, _ = clip
    model, prompts, _ = towers
    x = _images(2)
    with torch.no_grad():
        ref = clip_model.get_text_features(**tok(PROMPTS, padding=True, return_tensors="pt"))
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    explicit = caap(model, x, target=torch.tensor([1, 2]), score=embedding_similarity(ref), layers=(1, 3))
    named = caap(model, x, target=["a photo of a cat", "a diagram"], score=prompts, layers=(1, 3))
    torch.testing.assert_close(named.map, explicit.map, rtol=0, atol=1e-6)
    torch.testing.assert_close(named.source_score, explicit.source_score, rtol=0, atol=1e-6)
    assert named.map.std() > 0  # the patches differ: equality is not between two constants


def test_headless_predicted_error_mentions_prompts():
    model = HookedViT.from_timm("vit_base_patch16_clip_224", pretrained=False, depth=2, embed_dim=32, num_heads=2,
                                img_size=32, patch_size=8, num_classes=0)
    with pytest.raises(ValueError, match="TextPrompts"):
        caap(model, _images(1), layers=(0, 1))
    prompts = TextPrompts.from_embeddings(["a", "b"], torch.randn(2, 32, generator=torch.Generator().manual_seed(0)))
    result = caap(model, _images(1), score=prompts, layers=(0, 1))  # headless + prompts: predicted works
    assert result.targets.tolist() == prompts.predict(model(_images(1))).tolist()


def test_prompt_checks():
    with pytest.raises(ValueError, match="repeat"):
        TextPrompts(["a dog", "A dog"], lambda t: torch.eye(2))
    with pytest.raises(ValueError, match=r"\[n_prompts=2, d\]"):
        TextPrompts(["a", "b"], lambda t: torch.eye(3))
    with pytest.raises(ValueError, match="tokenizer"):
        TextPrompts(["a"], type("M", (), {"get_text_features": lambda self: None, "name_or_path": ""})())
    with pytest.raises(ValueError, match="cannot be mixed"):
        from caap_lens.attribution.settings import caap_settings

        model = HookedViT.from_timm("vit_base_patch16_clip_224", pretrained=False, depth=2, embed_dim=32,
                                    num_heads=2, img_size=32, patch_size=8, num_classes=2)
        caap_settings(model, scores=[TextPrompts.from_embeddings(["a", "b"], torch.eye(2)), "logit"])


def test_cli_explain_with_prompts(clip, tmp_path, capsys):
    from caap_lens.cli import main

    _, _, saved = clip  # the text tower; the image side is a timm CLIP tower by name (random init)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(2)) * 255).byte().numpy()).save(image)
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    args = ["explain", str(image), "--model", "vit_base_patch16_clip_224", "--num-classes", str(PROJ),
            "--timm-arg", "pretrained=False", "--timm-arg", "depth=3", "--timm-arg", "embed_dim=32",
            "--timm-arg", "num_heads=2", "--timm-arg", "img_size=32", "--timm-arg", "patch_size=8",
            "--text-model", str(saved), "--layers", "1:2", "--no-depth", "--no-progress", "--device", "cpu",
            "--out", str(tmp_path / "out")]
    assert main(args + ["--prompts", str(prompt_file), "--target", "a diagram"]) == 0
    out = capsys.readouterr().out
    assert "target:      a diagram;" in out, out
    record = json.loads((tmp_path / "out" / "x" / "map.json").read_text())
    assert record["target"] == {"index": 2, "name": "a diagram"}
    assert record["settings"]["targets"] == PROMPTS
    assert "a diagram" in (tmp_path / "out" / "x" / "report.html").read_text()
    assert main(args + ["--prompts", "a photo of a dog, a photo of a cat"]) == 0
    record = json.loads((tmp_path / "out" / "x" / "map.json").read_text())
    assert record["target"]["name"] in ("a photo of a dog", "a photo of a cat")
    capsys.readouterr()
    assert main(args + ["--prompts", "a dog,a cat", "--target", "a horse"]) == 2
    err = capsys.readouterr().err
    assert "unknown prompt 'a horse'" in err and "'a dog', 'a cat'" in err
    assert main(args[:-2] + ["--out", str(tmp_path / "o2"), "--prompts", "a dog,a cat", "--text-model",
                             str(tmp_path)]) == 2
    assert main(args[: args.index("--text-model")] + ["--prompts", "a dog,a cat"]) == 2
    assert "--text-model" in capsys.readouterr().err


def test_docs_example_runs(capsys):
    """The runnable example of the "CLIP prompts" section of docs/howto/own-model.md."""
    text = (Path(__file__).parents[1] / "docs" / "howto" / "own-model.md").read_text(encoding="utf-8")
    section = text[text.index("## CLIP prompts"):]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    runnable = [b for b in blocks if "pretrained=False" in b]
    assert len(runnable) == 1
    exec(compile(runnable[0], "own-model.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([2, 4, 4])" in out and ("a photo of a" in out or "a diagram" in out)


def test_siglip_text_features_normalised(tmp_path):
    """SiglipModel: padded to the maximum length (its pooled token is the last), no attention mask."""
    tr = _transformers()
    tok = _tokenizer(tmp_path)
    length = 24
    cfg = tr.SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=length, projection_size=PROJ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    model = tr.SiglipModel(cfg).eval()
    prompts = TextPrompts(PROMPTS, model, tok)
    with torch.no_grad():
        ids = tok(PROMPTS, padding="max_length", max_length=length, truncation=True, return_tensors="pt")["input_ids"]
        ref = model.get_text_features(input_ids=ids)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    assert prompts.embeddings.shape == (len(PROMPTS), ref.shape[-1])
    torch.testing.assert_close(prompts.embeddings, ref / ref.norm(dim=-1, keepdim=True), rtol=0, atol=1e-6)
    assert (prompts.embeddings[0] - prompts.embeddings[1]).abs().max() > 1e-3


def test_baselines_and_curves_resolve_predicted_to_the_best_prompt(towers):
    from caap_lens.baselines import attribute
    from caap_lens.metrics import deletion_curve

    model, prompts, _ = towers
    x = _images(3, seed=5)
    with torch.no_grad():
        best = prompts.predict(model(x)).tolist()
    assert attribute("token_gradcam", model, x, "predicted", score=prompts).targets.tolist() == best
    ig = attribute("integrated_gradients", model, x, "predicted", score=prompts, n_steps=4)
    assert ig.targets.tolist() == best
    curve = deletion_curve(model, x, ig.map, "predicted", score=prompts, steps=4)
    assert curve.targets.tolist() == best


# ------------------------------------------------------------- projection heads are not classifiers
@pytest.mark.skipif(not hasattr(HookedViT, "from_hf"), reason="HookedViT.from_hf is not there yet")
def test_predicted_on_a_projection_head_needs_prompts(towers):
    """A CLIP projection (n_classes = the projection's width) is an embedding: no argmax over it."""
    model, prompts, _ = towers
    assert model.cfg.output_kind == "embedding" and model.cfg.n_classes == PROJ
    with pytest.raises(ValueError, match=r"16-d embedding.*TextPrompts.*self_similarity"):
        caap(model, _images(1), layers=(1, 2))  # target="predicted", score="logit"
    with pytest.raises(ValueError, match="would pick a channel of it, not a class"):
        caap(model, _images(1), target=3, layers=(1, 2))
    x = _images(3)
    with torch.no_grad():
        best = prompts.predict(model(x)).tolist()
    assert caap(model, x, score=prompts, layers=(1, 2)).targets.tolist() == best


def test_timm_clip_towers_say_whether_their_head_projects():
    kw = dict(pretrained=False, depth=1, embed_dim=32, num_heads=2, img_size=32, patch_size=8)
    tower = HookedViT.from_timm("vit_base_patch16_clip_224.openai", **kw)  # the image-text tag: a projection
    assert (tower.cfg.n_classes, tower.cfg.output_kind) == (512, "embedding")
    with pytest.raises(ValueError, match="512-d embedding"):
        caap(tower, _images(1), layers=(0, 1))
    tuned = HookedViT.from_timm("vit_base_patch16_clip_224.openai_ft_in1k", **kw)
    assert tuned.cfg.output_kind == "classes"
    replaced = HookedViT.from_timm("vit_base_patch16_clip_224.openai", num_classes=5, **kw)  # a new classifier
    assert replaced.cfg.output_kind == "classes"
    assert caap(replaced, _images(1), layers=(0, 1)).targets.shape == (1,)
    plain = HookedViT.from_timm("vit_tiny_patch16_224", **{**kw, "embed_dim": 32})
    assert plain.cfg.output_kind == "classes"


@pytest.mark.skipif(not hasattr(HookedViT, "from_hf"), reason="HookedViT.from_hf is not there yet")
def test_cli_explains_a_saved_clip_model_against_its_own_prompts(clip, towers, tmp_path, capsys):
    """``--model`` and ``--text-model`` the same saved CLIPModel folder: its image tower, its text tower."""
    from PIL import Image

    from caap_lens.cli import main

    _, _, saved = clip
    model, prompts, _ = towers
    image = tmp_path / "x.png"
    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(2)) * 255
    Image.fromarray(pixels.byte().numpy()).save(image)
    args = ["explain", str(image), "--model", f"hf:{saved}", "--text-model", str(saved), "--prompts", ",".join(PROMPTS),
            "--layers", "1:2", "--no-depth", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{PROJ}-d embedding" in out and "weights: Hugging Face folder" in out
    x = model.preprocess(Image.open(image))
    with torch.no_grad():
        best = prompts.predict(model(x)).item()
    record = json.loads((tmp_path / "out" / "x" / "map.json").read_text())
    assert record["target"] == {"index": best, "name": PROMPTS[best]}
