"""The ``caap-lens`` command line: ``main([...])`` in-process on a small local timm checkpoint, bad
input (exit 2, one line, no traceback), folders and globs (exit 1 when some images fail), the index,
the weights' origin, the real console script, and the bundled default run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from caap_lens import cli
from caap_lens.cli import load_image, main, parse_depth_patches, parse_layers, parse_target, parse_timm_args

ARCH = "vit_tiny_patch16_224"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def bundled_available() -> bool:
    """Whether the bundled model and its sample scenes can be loaded (their files exist)."""
    if importlib.util.find_spec("caap_lens.loading.bundled") is None:
        return False
    try:
        from caap_lens.loading import bundled

        if "fashion-scenes-vit" not in list(bundled.list_bundled()):
            return False
        if hasattr(bundled, "bundled_path"):
            for name in ("model.safetensors", "config.json", "test_scenes.npz"):
                bundled.bundled_path("fashion-scenes-vit", name)  # raises if missing
        else:
            bundled.load_bundled_scenes("fashion-scenes-vit")
        return True
    except Exception:
        return False


BUNDLED = bundled_available()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 4-layer 64x64 timm ViT saved as a safetensors checkpoint, plus images of several kinds."""
    from PIL import Image
    from safetensors.torch import save_file

    from caap_lens._timm import import_timm

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = import_timm().create_model(ARCH, depth=4, img_size=64, num_classes=10)
    save_file(model.state_dict(), str(d / "tiny.safetensors"))
    torch.save(model.state_dict(), d / "tiny.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 70, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(d / "gray.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)).save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(d / "photo.jpg", quality=90)
    (d / "notes.png").write_text("this is not an image\n")
    (d / "names.txt").write_text("\n".join(CLASSES) + "\n")
    return d


def base(files: Path, *extra: str) -> list[str]:
    return ["explain", "--model", str(files / "tiny.safetensors"), "--arch", ARCH, "--timm-arg", "img_size=64",
            "--timm-arg", "depth=4", "--no-progress", *extra]


def test_explain_writes_report_map_and_json(files, tmp_path, capsys):
    out = tmp_path / "out"
    images = [str(files / n) for n in ("rgb.png", "gray.png", "rgba.png", "photo.jpg")]
    assert main(base(files, *images, "--out", str(out))) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # one copy of plotly.js for the folder
    index = (out / "index.html").read_text(encoding="utf-8")
    for stem in ("rgb", "gray", "rgba", "photo"):
        folder = out / stem
        assert (folder / "report.html").stat().st_size < 1_000_000  # it reads ../plotly.min.js
        assert f"href='{stem}/report.html'" in index
        m = np.load(folder / "map.npy")
        assert m.shape == (4, 4)  # the model's patch grid
        record = json.loads((folder / "map.json").read_text())
        np.testing.assert_allclose(np.array(record["map"]), m, rtol=1e-6)
        assert record["settings"]["layers"] == [1, 2]  # default_window(4)
        assert np.load(folder / "profile.npy").shape == (4, 4, 4)
        assert f"report:      {folder / 'report.html'}" in captured.out
    assert captured.out.count("top patches:") == 4 and captured.out.count("prediction:") == 4
    assert "time:" in captured.out


def test_explain_options(files, tmp_path, capsys):
    out = tmp_path / "o"
    argv = base(files, str(files / "rgb.png"), "--class-names", str(files / "names.txt"), "--target", "dress",
                "--layers", "0:3", "--context", "blur", "--score", "prob", "--relative", "--batch-size", "3",
                "--hook", "resid_mid", "--no-depth", "--out", str(out))
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "target:      Dress (3)" in summary
    record = json.loads((out / "rgb" / "map.json").read_text())
    assert record["target"] == {"index": 3, "name": "Dress"}
    s = record["settings"]
    assert s["layers"] == [0, 3] and s["context"].startswith("blur") and s["score"] == "prob"
    assert s["relative"] is True and s["batch_size"] == 3 and s["hook"] == "resid_mid"
    assert not (out / "rgb" / "profile.npy").exists() and record["depth_profile"] is None
    # a .pth checkpoint, a numeric target and bf16
    argv = ["explain", str(files / "gray.png"), "--model", str(files / "tiny.pth"), "--arch", ARCH,
            "--timm-arg", "img_size=64", "--timm-arg", "depth=4", "--target", "7", "--bf16", "--no-depth",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "gray" / "map.json").read_text())
    assert record["target"]["index"] == 7 and "bfloat16" in record["settings"]["dtype"]


def tiny_model(files: Path):
    """The checkpoint of `files` as the CLI loads it, and the CLI's input for ``rgb.png``."""
    from caap_lens import HookedViT

    model = HookedViT.from_timm(ARCH, checkpoint_path=str(files / "tiny.safetensors"), img_size=64, depth=4,
                                num_classes=10)
    return model, model.preprocess(load_image(files / "rgb.png"))


def test_depth_profile_of_top_patches(files, tmp_path, capsys):
    from caap_lens import depth_profile

    out = tmp_path / "o"
    assert main(base(files, str(files / "rgb.png"), "--depth-patches", "3", "--out", str(out))) == 0
    assert "(3 patches x 4 layers)" in capsys.readouterr().out
    record = json.loads((out / "rgb" / "map.json").read_text())
    top3 = [p["patch"] for p in record["top_patches"][:3]]
    assert record["depth_profile"]["patches"] == top3
    prof = np.load(out / "rgb" / "profile.npy")
    assert prof.shape == (4, 4, 4) and int(np.isfinite(prof[0]).sum()) == 3
    model, x = tiny_model(files)  # the library's profile of those patches, NaN elsewhere
    expected = depth_profile(model, x, torch.tensor([record["target"]["index"]]), patches=top3).maps[:, 0].numpy()
    assert np.isnan(expected).sum() == 4 * 13
    np.testing.assert_allclose(prof, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_prediction_is_the_models_output(files, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(base(files, str(files / "rgb.png"), "--no-depth", "--out", str(out))) == 0
    summary = capsys.readouterr().out
    record = json.loads((out / "rgb" / "map.json").read_text())
    model, x = tiny_model(files)
    with torch.inference_mode():
        top = torch.softmax(model(x)[0].double(), -1).topk(5)
    assert record["prediction"]["activation"] == "softmax"  # --probs auto: the config's default
    assert [c["index"] for c in record["prediction"]["top"]] == top.indices.tolist()
    np.testing.assert_allclose([c["score"] for c in record["prediction"]["top"]], top.values.numpy(), rtol=1e-5)
    best = int(top.indices[0])
    assert f"prediction:  class {best}, probability (softmax) {float(top.values[0]):.3f}" in summary


def test_probs_auto_follows_the_config(files, tmp_path, monkeypatch, capsys):
    load = cli.load_model

    def sigmoid_model(args):
        model, description, bundled = load(args)
        model.cfg.output_activation = "sigmoid"
        return model, description, bundled

    monkeypatch.setattr(cli, "load_model", sigmoid_model)
    model, x = tiny_model(files)
    with torch.inference_mode():
        expected = torch.sigmoid(model(x)[0].double()).topk(5).values.numpy()
    for probs, kind in (("auto", "sigmoid"), ("logits", "logits"), ("softmax", "softmax")):
        out = tmp_path / probs
        assert main(base(files, str(files / "rgb.png"), "--no-depth", "--probs", probs, "--out", str(out))) == 0
        record = json.loads((out / "rgb" / "map.json").read_text())
        assert record["prediction"]["activation"] == kind
        if kind == "sigmoid":
            np.testing.assert_allclose([c["score"] for c in record["prediction"]["top"]], expected, rtol=1e-5)
    assert "probability (sigmoid, per class)" in capsys.readouterr().out


def test_choices_are_the_registries():
    from caap_lens.attribution.contexts import CONTEXTS
    from caap_lens.attribution.scores import SCORES
    from caap_lens.patching import PATCHABLE_HOOKS

    assert list(cli.CONTEXTS) == list(CONTEXTS) and list(cli.SCORES) == list(SCORES)
    assert list(cli.HOOKS) == list(PATCHABLE_HOOKS)
    explain = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["explain"]
    choices = {a.dest: a.choices for a in explain._actions if a.choices is not None}
    assert choices["context"] is cli.CONTEXTS and choices["score"] is cli.SCORES and choices["hook"] is cli.HOOKS
    assert "mean_activation" in cli.CONTEXTS and "grey" not in cli.CONTEXTS and cli.HOOKS[-1] == "mlp_post"


def test_parser_does_not_import_torch():
    code = "import sys, caap_lens.cli as c; c.build_parser().parse_args(['explain']); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_same_stem_twice_gets_two_folders(files, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(files / "rgb.png", other / "rgb.png")
    out = tmp_path / "out"
    assert main(base(files, str(files / "rgb.png"), str(other / "rgb.png"), "--no-depth", "--out", str(out))) == 0
    assert (out / "rgb" / "map.npy").exists() and (out / "rgb_2" / "map.npy").exists()
    capsys.readouterr()


def _empty_folder(d: Path) -> Path:
    (d / "empty").mkdir(exist_ok=True)
    (d / "empty" / "readme.txt").write_text("no images here\n")
    return d / "empty"


BAD_INPUTS = {
    "missing image": (lambda d: [str(d / "nope.png")], "not found"),
    "not an image": (lambda d: [str(d / "notes.png")], "not an image"),
    "folder without images": (lambda d: [str(_empty_folder(d))], "folder with no image files"),
    "glob matching nothing": (lambda d: [str(d / "*.nothing")], "no file matches"),
    "unknown class name": (lambda d: [str(d / "rgb.png"), "--class-names", ",".join(CLASSES), "--target", "dres"],
                           "unknown class name 'dres'"),
    "class name without names": (lambda d: [str(d / "rgb.png"), "--target", "cat"], "no class names"),
    "target out of range": (lambda d: [str(d / "rgb.png"), "--target", "10"], "out of range"),
    "layers not a:b": (lambda d: [str(d / "rgb.png"), "--layers", "3"], "START:STOP"),
    "layers not ints": (lambda d: [str(d / "rgb.png"), "--layers", "a:b"], "START:STOP"),
    "layers out of range": (lambda d: [str(d / "rgb.png"), "--layers", "0:9"], "4 layers"),
    "layers empty window": (lambda d: [str(d / "rgb.png"), "--layers", "2:2"], "START < STOP"),
    "bad timm arg": (lambda d: [str(d / "rgb.png"), "--timm-arg", "img_size"], "KEY=VALUE"),
    "bad batch size": (lambda d: [str(d / "rgb.png"), "--batch-size", "0"], "batch-size"),
    "bad depth patches": (lambda d: [str(d / "rgb.png"), "--depth-patches", "some"], "--depth-patches"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2(files, tmp_path, capsys, case):
    make_args, message = BAD_INPUTS[case]
    assert main(base(files, *make_args(files), "--out", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caap-lens: error: "), err
    assert message in lines[0]


BAD_MODELS = {
    "unknown model": (["--model", "no_such_model_xyz"], "unknown model 'no_such_model_xyz'"),
    "missing checkpoint": (["--model", "missing.safetensors", "--arch", ARCH], "checkpoint file not found"),
    "checkpoint without arch": (["--model", "{d}/tiny.safetensors"], "--arch"),
    "unknown arch": (["--model", "{d}/tiny.safetensors", "--arch", "vit_nope"], "unknown model 'vit_nope'"),
    "checkpoint of another arch": (["--model", "{d}/tiny.safetensors", "--arch", "vit_small_patch16_224",
                                    "--timm-arg", "img_size=64", "--timm-arg", "depth=4"], "cannot load model"),
    "not a checkpoint": (["--model", "{d}/notes.png", "--arch", ARCH], "cannot"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_one_line_exit_2(files, tmp_path, capsys, case):
    args, message = BAD_MODELS[case]
    args = [a.replace("{d}", str(files)) for a in args]
    assert main(["explain", str(files / "rgb.png"), *args, "--no-progress", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caap-lens: error: "), err
    assert message in lines[0]


def test_argparse_errors_exit_2(capsys):
    assert main(["explain", "--context", "grey"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "'mean_activation'" in err  # the registry's names
    assert main(["explain", "--batch-size", "many"]) == 2
    assert main([]) == 2  # no command: help on stderr
    assert "explain" in capsys.readouterr().err
    assert main(["explain", "--help"]) == 0
    assert "--layers START:STOP" in capsys.readouterr().out


def test_parsers():
    assert parse_layers("1:3", 4) == (1, 3)
    assert parse_depth_patches("auto", 64) is None and parse_depth_patches("auto", 196) == 16
    assert parse_depth_patches("all", 196) is None and parse_depth_patches("200", 196) is None
    assert parse_target(None, CLASSES, 10) == "predicted"
    assert parse_target("ANKLE BOOT", CLASSES, 10) == 9
    assert parse_target("4", None, 10) == 4
    assert parse_timm_args(["depth=4", "pretrained=False", "global_pool=avg", "img_size=(64, 48)"]) == {
        "depth": 4, "pretrained": False, "global_pool": "avg", "img_size": (64, 48)}


def test_console_script_entry_point(files, tmp_path):
    script = shutil.which("caap-lens")
    prefix = [script] if script else [sys.executable, "-m", "caap_lens"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [*prefix, *base(files, str(files / "rgb.png"), "--threads", "1", "--no-depth", "--out", str(tmp_path))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rgb" / "report.html").exists() and "top patches:" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "caap_lens", "explain", str(files / "nope.png")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [f"caap-lens: error: image file not found: {files / 'nope.png'}"]


def test_no_args_without_bundled_model(tmp_path, capsys, monkeypatch):
    from caap_lens.loading import bundled

    monkeypatch.setattr(bundled, "list_bundled", lambda: [])  # an installation without the bundled model
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("caap-lens: error: ") and "fashion-scenes-vit" in err[0]


@pytest.mark.skipif(not BUNDLED, reason="the bundled model fashion-scenes-vit is not available")
def test_no_args_runs_bundled_model_on_bundled_scene(tmp_path):
    script = shutil.which("caap-lens")
    prefix = [script] if script else [sys.executable, "-m", "caap_lens"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([*prefix, "explain"], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 60, f"caap-lens explain took {seconds:.1f} s"
    folder = tmp_path / "caap_lens_report" / "scene_0"
    assert (folder / "report.html").exists()
    record = json.loads((folder / "map.json").read_text())
    assert np.load(folder / "map.npy").shape == tuple(record["grid"]["grid_size"])
    from caap_lens.loading.bundled import load_bundled_scenes

    assert record["target"]["name"] in load_bundled_scenes("fashion-scenes-vit").class_names
    from caap_lens import HookedViT

    assert record["prediction"]["activation"] == HookedViT.from_pretrained("fashion-scenes-vit").cfg.output_activation
    assert "prediction:" in proc.stdout and "report:" in proc.stdout


@pytest.mark.skipif(not BUNDLED, reason="the bundled model fashion-scenes-vit is not available")
def test_bundled_model_is_multi_label():
    from caap_lens.loading.bundled import bundled_config

    assert bundled_config("fashion-scenes-vit")["output_activation"] == "sigmoid"


@pytest.mark.skipif(not BUNDLED, reason="the bundled model fashion-scenes-vit is not available")
def test_bundled_loader_reads_the_output_activation():
    from caap_lens import HookedViT

    assert HookedViT.from_pretrained("fashion-scenes-vit").cfg.output_activation == "sigmoid"


@pytest.fixture()
def folder(files, tmp_path):
    """Three small images, one of them a broken PNG."""
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(files / "rgb.png", d / name)
    (d / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (d / "notes.txt").write_text("not an image suffix: left out\n")
    return d


def test_folder_goes_on_after_a_broken_image_and_exits_1(files, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(base(files, str(folder), "--no-depth", "--out", str(out))) == 1  # some failed
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("caap-lens: error: ")]
    assert len(errors) == 1 and "c_broken.png" in errors[0] and "Traceback" not in captured.err
    assert (out / "a" / "report.html").exists() and (out / "b" / "report.html").exists()
    assert not (out / "c_broken").exists() and not (out / "notes").exists()
    assert "2 reports in" in captured.out and "1 failed" in captured.out
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "href='a/report.html'" in index and "href='b/report.html'" in index and "c_broken.png" in index
    for stem in ("a", "b"):  # each row: the model line and the image's prediction
        record = json.loads((out / stem / "map.json").read_text())
        assert record["model"]["weights"] and record["model"]["weights"] in index
    rows = json.loads((out / "index.json").read_text())
    assert [r["report"] for r in rows["reports"]] == ["a/report.html", "b/report.html"]
    assert all(r["prediction"] and r["prediction"] in index for r in rows["reports"])
    assert [f["image"] for f in rows["failed"]] == [str(folder / "c_broken.png")]


def test_quoted_glob_and_one_plotly_js(files, folder, tmp_path, capsys):
    out = tmp_path / "out"
    (folder / "c_broken.png").unlink()
    assert main(base(files, str(folder / "*.png"), "--no-depth", "--out", str(out))) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "index.html", "index.json", "plotly.min.js"]
    js = out / "plotly.min.js"
    os.utime(js, ns=(1_000_000_000, 1_000_000_000))
    assert main(base(files, str(folder / "a.png"), "--no-depth", "--out", str(out))) == 0  # same folder again
    assert js.stat().st_mtime_ns == 1_000_000_000  # written once, not per report
    assert "../plotly.min.js" in (out / "a" / "report.html").read_text(encoding="utf-8")
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "href='a/report.html'" in index and "href='b/report.html'" in index  # earlier rows kept
    capsys.readouterr()


def test_every_input_broken_exits_2(files, tmp_path, capsys):
    argv = base(files, str(files / "notes.png"), str(files / "nope.png"), "--out", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("caap-lens: error: ") for line in err)
    assert "none of the 2 inputs" in err[-1]


def test_weights_origin_in_console_and_map_json(files, tmp_path, capsys):
    assert main(base(files, str(files / "rgb.png"), "--no-depth", "--out", str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert "weights: " in out and "tiny.safetensors" in out.split("weights: ")[1].splitlines()[0]
    record = json.loads((tmp_path / "rgb" / "map.json").read_text())
    assert record["model"]["weights_kind"] == "checkpoint" and "tiny.safetensors" in record["model"]["weights"]
    assert record["notes"] == []


def test_random_weights_with_class_names_are_flagged(files, tmp_path, capsys):
    argv = ["explain", str(files / "rgb.png"), "--model", ARCH, "--timm-arg", "pretrained=False",
            "--timm-arg", "img_size=64", "--timm-arg", "depth=4", "--num-classes", "10",
            "--class-names", ",".join(CLASSES), "--no-depth", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "caap-lens: warning: weights are random" in captured.err and "mean nothing" in captured.err
    assert "weights: random" in captured.out
    record = json.loads((tmp_path / "rgb" / "map.json").read_text())
    assert record["model"]["weights_kind"] == "random" and "mean nothing" in record["notes"][0]
    page = (tmp_path / "rgb" / "report.html").read_text(encoding="utf-8")
    assert "class='note'" in page and "weights are random" in page


def test_raw_flag_and_effect_by_default(files, tmp_path, capsys):
    assert main(base(files, str(files / "rgb.png"), "--no-depth", "--out", str(tmp_path / "e"))) == 0
    effect_out = capsys.readouterr().out
    assert "(logit − context)" in effect_out
    record = json.loads((tmp_path / "e" / "rgb" / "map.json").read_text())
    assert record["values"] == "effect"
    best = record["top_patches"][0]
    assert best["effect"] == pytest.approx(best["value"] - record["context_score"], abs=1e-5)
    assert f"{best['effect']:+.4g}" in effect_out
    np.testing.assert_allclose(np.array(record["effect"]), np.array(record["map"]) - record["context_score"],
                               rtol=1e-5, atol=1e-5)
    assert main(base(files, str(files / "rgb.png"), "--no-depth", "--raw", "--out", str(tmp_path / "r"))) == 0
    raw_out = capsys.readouterr().out
    assert "(logit (raw))" in raw_out and f"{best['value']:+.4g}" in raw_out
    assert json.loads((tmp_path / "r" / "rgb" / "map.json").read_text())["values"] == "raw"
    assert "Value (raw)" in (tmp_path / "r" / "rgb" / "report.html").read_text(encoding="utf-8")


@pytest.mark.skipif(not BUNDLED, reason="the bundled model fashion-scenes-vit is not available")
def test_a_photo_on_the_bundled_model_says_what_it_knows(files, tmp_path, capsys):
    assert main(["explain", str(files / "rgb.png"), "--no-depth", "--no-progress", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "only knows Fashion-MNIST scenes" in captured.err
    record = json.loads((tmp_path / "rgb" / "map.json").read_text())
    assert any("only knows Fashion-MNIST scenes" in n for n in record["notes"])
    assert record["model"]["weights_kind"] == "bundled"
    assert "only knows Fashion-MNIST scenes" in (tmp_path / "rgb" / "report.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------- Hugging Face models
def _hf_image(tmp_path: Path, size: int = 32) -> Path:
    from PIL import Image

    path = tmp_path / "hf.png"
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def hf_vit_folder(tmp_path_factory):
    """A random-init 2-layer HF ViTForImageClassification (3 named classes) saved with save_pretrained."""
    from caap_lens.converters.hf_config import import_transformers

    hf = import_transformers()
    config = hf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"})
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "vit"
    hf.ViTForImageClassification(config).eval().save_pretrained(folder)
    return folder


def _hf_args(image: Path, model: str, out: Path, *extra: str) -> list[str]:
    return ["explain", str(image), "--model", model, "--layers", "0:1", "--no-depth", "--no-progress",
            "--device", "cpu", "--out", str(out), *extra]


def test_a_saved_hugging_face_folder_loads_offline(hf_vit_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = _hf_image(tmp_path)
    assert main(_hf_args(image, str(hf_vit_folder), tmp_path / "a", "--target", "dog")) == 0
    out = capsys.readouterr().out
    assert "Hugging Face vit, classifier" in out and "3 classes" in out
    weights = out.split("weights: ")[1].splitlines()[0]
    assert weights.startswith("Hugging Face folder") and str(hf_vit_folder.resolve()) in weights
    record = json.loads((tmp_path / "a" / "hf" / "map.json").read_text())
    assert record["target"] == {"index": 1, "name": "dog"}
    assert record["model"]["weights_kind"] == "checkpoint" and "Hugging Face folder" in record["model"]["weights"]
    # hf:DIR and the folder's weights file (no --arch) load the same model
    assert main(_hf_args(image, f"hf:{hf_vit_folder}", tmp_path / "b")) == 0
    assert main(_hf_args(image, str(hf_vit_folder / "model.safetensors"), tmp_path / "c")) == 0
    capsys.readouterr()
    maps = [np.load(tmp_path / d / "hf" / "map.npy") for d in "bc"]
    np.testing.assert_array_equal(maps[0], maps[1])


def test_hugging_face_model_bad_input_is_one_line(hf_vit_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = _hf_image(tmp_path)
    cases = {
        "--arch": (["--arch", ARCH], "do not apply to the Hugging Face model"),
        "class names": (["--class-names", "a,b"], "2 names for 3 classes"),
    }
    for extra, message in cases.values():
        assert main(_hf_args(image, str(hf_vit_folder), tmp_path / "o", *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(_hf_args(image, "hf:nobody/no-such-model-here", tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-model-here" in err[0] and "hub name" in err[0], err
    assert main(_hf_args(image, "hf:", tmp_path / "o")) == 2
    assert "after 'hf:'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_hf_args(image, str(empty), tmp_path / "o")) == 2
    assert "config.json" in capsys.readouterr().err


def test_a_hugging_face_clip_projection_is_explained_as_an_embedding(tmp_path, capsys, monkeypatch):
    """A CLIPVisionModelWithProjection: its projection is no classifier, so no --target; self-similarity."""
    from caap_lens.converters.hf_config import import_transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = import_transformers()
    config = hf.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    hf.CLIPVisionModelWithProjection(config).eval().save_pretrained(tmp_path / "clip")
    image = _hf_image(tmp_path)
    assert main(_hf_args(image, str(tmp_path / "clip"), tmp_path / "o")) == 0
    out = capsys.readouterr().out
    assert "16-d embedding" in out and "classes," not in out.splitlines()[0]
    record = json.loads((tmp_path / "o" / "hf" / "map.json").read_text())
    assert record["target"]["name"] == "own embedding (self-similarity)" and record["prediction"]["top"] == []
    assert main(_hf_args(image, str(tmp_path / "clip"), tmp_path / "o", "--target", "3")) == 2
    err = capsys.readouterr().err
    assert "16-d embedding" in err and "--prompts" in err


def test_image_size_runs_a_dynamic_size_model_at_that_size(files, tmp_path, capsys):
    """``--image-size`` with a timm model created with ``dynamic_img_size=True``: the map is on that size's grid."""
    out = tmp_path / "wide"
    argv = ["explain", str(files / "rgb.png"), "--model", ARCH, "--timm-arg", "pretrained=False", "--timm-arg",
            "img_size=32", "--timm-arg", "depth=2",
            "--timm-arg", "dynamic_img_size=True", "--image-size", "48x80", "--no-depth", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    assert "grid 3x5" in capsys.readouterr().out
    assert np.load(out / "rgb" / "map.npy").shape == (3, 5)
    record = json.loads((out / "rgb" / "map.json").read_text())
    assert record["model"]["image_size"] == [48, 80]
    # a fixed-size model: one line that says how to get a dynamic one
    assert main(base(files, str(files / "rgb.png"), "--image-size", "48x80", "--out", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert "--image-size 48x80" in err and "dynamic_img_size=True" in err and len(err.strip().splitlines()) == 1
    assert main(base(files, str(files / "rgb.png"), "--image-size", "48xx", "--out", str(tmp_path))) == 2
    assert "HxW or N" in capsys.readouterr().err


def test_image_size_runs_a_hugging_face_model_at_that_size(hf_vit_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = _hf_image(tmp_path)
    assert main(_hf_args(image, str(hf_vit_folder), tmp_path / "w", "--image-size", "48x40")) == 0
    capsys.readouterr()
    assert np.load(tmp_path / "w" / "hf" / "map.npy").shape == (6, 5)
