"""Text prompts as CAAP targets: zero-shot attribution for CLIP-like image towers.

A CLIP image tower has no classes: it outputs an embedding that is compared with the embeddings of
text prompts. `TextPrompts` holds a list of prompts and their unit-norm embeddings from the model's
text tower, and is the score handed to `caap`: a patched run scores the cosine similarity of its
output with the target prompt's embedding (as `caap_lens.attribution.scores.embedding_similarity`
does), and the prompts name the targets, so ``target`` may be a prompt, a prompt's index, or
``"predicted"`` (per image, the prompt its embedding matches best).

The text tower is one of:

* a Hugging Face ``CLIPModel`` or ``SiglipModel`` with its tokenizer (`hf_text_encoder`), or a saved
  folder holding both (`load_text_encoder`): the text tower and its projection, normalised as the
  model normalises them before its logits;
* any callable ``encoder(prompts) -> [n_prompts, d]`` (rows are normalised here).

The image model must output the same embedding space: a CLIP image tower *with* its projection
(the text side's width ``d``), e.g. the vision half of the same ``CLIPModel``.

Example:
    >>> encoder = lambda texts: torch.tensor([[1.0, 0.0] if "dog" in t else [0.0, 1.0] for t in texts])
    >>> prompts = TextPrompts(["a photo of a dog", "a photo of a cat"], encoder)
    >>> image_embeddings = torch.tensor([[0.2, 0.9], [3.0, 1.0]])
    >>> prompts.predict(image_embeddings).tolist()
    [1, 0]
    >>> prompts.index("a photo of a dog")
    0
    >>> caap(model, images, target="a photo of a dog", score=prompts)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from caap_lens.attribution.scores import embedding_similarity

TextEncoder = Callable[[list], Tensor]
EncoderLike = Union[TextEncoder, str, "os.PathLike[str]", Any]

__all__ = ["TextPrompts", "encode_prompts", "hf_text_encoder", "load_text_encoder"]


def _transformers() -> Any:
    from caap_lens._timm import import_timm

    import_timm()  # torchvision's CPU/CUDA mismatch is worked around there; transformers imports it too
    try:
        import transformers
    except ImportError:
        raise ImportError("text prompts from a Hugging Face model need transformers: pip install transformers") from None
    return transformers


def _features(out: Any) -> Tensor:
    # transformers < 5 returns the projected tensor; 5 returns an output whose pooler_output is it
    return out if isinstance(out, Tensor) else out.pooler_output


def hf_text_encoder(model: Any, tokenizer: Any) -> TextEncoder:
    """A text encoder from a Hugging Face ``CLIPModel``/``SiglipModel`` and its tokenizer.

    The encoder returns ``model.get_text_features`` (text tower and projection) of the prompts,
    tokenised as the model expects: padded to the longest prompt for CLIP, to the model's maximum
    length for SigLIP (its pooled token is the last one).

    Args:
        model: A model with ``get_text_features`` (``CLIPModel``, ``SiglipModel``, ...).
        tokenizer: Its tokenizer (``AutoTokenizer.from_pretrained(same folder)``).

    Raises:
        TypeError: ``model`` has no text tower.
    """
    if not callable(getattr(model, "get_text_features", None)):
        raise TypeError(
            f"{type(model).__name__} has no text tower (get_text_features): give a CLIPModel or SiglipModel, "
            "or a callable prompts -> [n_prompts, d]"
        )
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", config)
    max_length = getattr(text_config, "max_position_embeddings", None)
    last_token = getattr(config, "model_type", "") == "siglip"

    def encode(prompts: list) -> Tensor:
        padding = "max_length" if last_token else True
        tokens = tokenizer(list(prompts), padding=padding, truncation=max_length is not None,
                           max_length=max_length, return_tensors="pt")
        device = next(model.parameters()).device
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        if last_token:
            tokens.pop("attention_mask", None)  # SigLIP's text tower is trained without one
        with torch.inference_mode():
            return _features(model.get_text_features(**tokens))

    encode.__name__ = f"{type(model).__name__}.get_text_features"
    return encode


def load_text_encoder(path: str | os.PathLike[str]) -> TextEncoder:
    """The text encoder of a saved Hugging Face ``CLIPModel``/``SiglipModel`` folder (model and tokenizer).

    Nothing is downloaded: the folder must hold the model's ``config.json``, weights and tokenizer
    files (what ``model.save_pretrained(dir)`` and ``tokenizer.save_pretrained(dir)`` write).

    Raises:
        FileNotFoundError: ``path`` is not a folder.
        ValueError: the folder holds no model with a text tower, or no tokenizer.
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"text model folder not found: {folder} (a saved CLIPModel/SiglipModel folder)")
    transformers = _transformers()
    try:
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load a text model from {folder}: {' '.join(str(err).split())[:300]}") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{folder} has no tokenizer to encode prompts with (save it with "
                         f"tokenizer.save_pretrained): {' '.join(str(err).split())[:200]}") from None
    try:
        return hf_text_encoder(model, tokenizer)
    except TypeError as err:
        raise ValueError(f"{folder}: {err}") from None


def _as_encoder(encoder: EncoderLike, tokenizer: Any) -> TextEncoder:
    if isinstance(encoder, (str, os.PathLike)):
        return load_text_encoder(encoder)
    if callable(getattr(encoder, "get_text_features", None)):
        if tokenizer is None:
            folder = getattr(encoder, "name_or_path", "")
            if not (folder and os.path.isdir(folder)):
                raise ValueError(f"a {type(encoder).__name__} needs its tokenizer: pass tokenizer= "
                                 "(AutoTokenizer.from_pretrained(...)), or the saved model folder instead")
            tokenizer = _transformers().AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return hf_text_encoder(encoder, tokenizer)
    if tokenizer is not None:
        raise ValueError("tokenizer= is for a Hugging Face model; a callable encoder tokenises by itself")
    if not callable(encoder):
        raise TypeError(f"encoder must be a CLIPModel/SiglipModel, a saved model folder or a callable "
                        f"prompts -> [n_prompts, d], got {type(encoder).__name__}")
    return encoder


def _check_prompts(prompts: str | Sequence[str]) -> tuple[str, ...]:
    items = (prompts,) if isinstance(prompts, str) else tuple(prompts)
    if not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise ValueError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r}")
    lowered = [p.strip().lower() for p in items]
    repeated = sorted({p for p in items if lowered.count(p.strip().lower()) > 1})
    if repeated:
        raise ValueError(f"prompts repeat {repeated}: each prompt names one target")
    return items


def encode_prompts(
    prompts: str | Sequence[str], encoder: EncoderLike, tokenizer: Any = None
) -> Float[Tensor, "n_prompts d_embed"]:
    """Unit-norm text embeddings of ``prompts``, float32 on the CPU.

    Args:
        prompts: The prompts (one string is one prompt).
        encoder: A ``CLIPModel``/``SiglipModel`` (with ``tokenizer``), a saved model folder, or a
            callable ``prompts -> [n_prompts, d]``.
        tokenizer: The Hugging Face model's tokenizer.

    Raises:
        ValueError: the encoder's output is not one finite, non-zero row per prompt.

    Example:
        >>> encode_prompts(["a", "b"], lambda texts: torch.tensor([[3.0, 4.0], [0.0, 2.0]])).norm(dim=-1).tolist()
        [1.0, 1.0]
    """
    items = _check_prompts(prompts)
    with torch.inference_mode():
        out = _as_encoder(encoder, tokenizer)(list(items))
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(items):
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the text encoder must return [n_prompts={len(items)}, d] embeddings, got {got}")
    out = out.detach().float().cpu()
    norms = out.norm(dim=-1)
    if not torch.isfinite(out).all() or bool((norms == 0).any()):
        raise ValueError("the text encoder returned a zero or non-finite embedding")
    return (out / norms[:, None]).clone()


class TextPrompts:
    """Text prompts as targets and score: cosine similarity with the target prompt's embedding.

    Pass it as ``score=`` to `caap`, the sweeps or ``caap-lens explain --prompts``; ``target`` is then a
    prompt (case and surrounding spaces ignored), a prompt index, ``"predicted"`` (the best-matching
    prompt of each image) or one of those per image.

    Args:
        prompts: The prompts (one string is one prompt); they must differ.
        encoder: A ``CLIPModel``/``SiglipModel`` (with ``tokenizer``), a saved model folder, or a
            callable ``prompts -> [n_prompts, d]``.
        tokenizer: The Hugging Face model's tokenizer.

    Attributes:
        prompts: The prompts, in order: target ``i`` is ``prompts[i]``.
        embeddings: Their unit-norm embeddings ``[n_prompts, d_embed]``.

    Example:
        >>> prompts = TextPrompts.from_embeddings(["a dog", "a cat"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> prompts(torch.tensor([[2.0, 2.0]]), torch.tensor([1])).tolist()  # cosine similarity
        [0.7071067690849304]
        >>> prompts.index("A Cat"), prompts.target_names
        (1, ('a dog', 'a cat'))
    """

    __name__ = "prompt_similarity"

    def __init__(self, prompts: str | Sequence[str], encoder: EncoderLike, tokenizer: Any = None) -> None:
        self.prompts = _check_prompts(prompts)
        self.embeddings = encode_prompts(self.prompts, encoder, tokenizer)
        self._score = embedding_similarity(self.embeddings)

    @classmethod
    def from_embeddings(
        cls, prompts: str | Sequence[str], embeddings: Float[Tensor, "n_prompts d_embed"]
    ) -> "TextPrompts":
        """Prompts whose embeddings are already computed (normalised here)."""
        embeddings = torch.as_tensor(embeddings)
        return cls(prompts, lambda texts: embeddings)

    @property
    def target_names(self) -> tuple[str, ...]:
        """The names targets resolve against (`caap_lens.attribution.targets.resolve_targets`)."""
        return self.prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return f"TextPrompts({list(self.prompts)!r}, d_embed={self.embeddings.shape[-1]})"

    def index(self, name: str) -> int:
        """The index of prompt ``name`` (case and surrounding spaces ignored).

        Raises:
            ValueError: no such prompt; the message lists the prompts.
        """
        lowered = [p.strip().lower() for p in self.prompts]
        key = name.strip().lower()
        if key not in lowered:
            listing = ", ".join(repr(p) for p in self.prompts[:20]) + (", ..." if len(self) > 20 else "")
            raise ValueError(f"unknown prompt {name!r}: the prompts are {listing} (or give an index, or 'predicted')")
        return lowered.index(key)

    def similarities(self, output: Float[Tensor, "batch d_embed"]) -> Float[Tensor, "batch n_prompts"]:
        """Cosine similarity of each output embedding with every prompt."""
        self._check_width(output)
        return F.normalize(output.float(), dim=-1) @ self.embeddings.to(output.device).T

    def predict(self, output: Float[Tensor, "batch d_embed"]) -> Int[Tensor, " batch"]:
        """The best-matching prompt of each output embedding (what ``target="predicted"`` means)."""
        return self.similarities(output).argmax(dim=-1).cpu()

    def __call__(self, output: Float[Tensor, "rows d_embed"], target: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        self._check_width(output)
        return self._score(output, target)

    def _check_width(self, output: Tensor) -> None:
        if output.shape[-1] != self.embeddings.shape[-1]:
            raise ValueError(
                f"the model outputs {output.shape[-1]}-d vectors but the prompts' embeddings are "
                f"{self.embeddings.shape[-1]}-d: the image model must output the text tower's embedding space "
                "(a CLIP image tower with its projection)"
            )
