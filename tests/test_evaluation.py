"""The evaluation harness (`caap_lens.evaluation`): plan hash, store, resume, corruption, sharding, tables, CLI.

A tiny random-init ViT (2 blocks, 32 px, patch 8: a 4x4 grid) and a handful of synthetic scenes keep
each test to a few seconds; the multi-process (torchrun) and SIGKILL checks are in
``test_evaluation_distributed.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_timm

from caap_lens.evaluation import (
    ImageFolderSource,
    ListSource,
    MethodSpec,
    Plan,
    PlanMismatch,
    SceneSource,
    evaluate,
    merge,
)
from caap_lens.evaluation.distributed import shard
from caap_lens.evaluation.plan import PlanError
from caap_lens.evaluation.tables import holm, t_test_p

METHODS = ["caap", "rollout", "random"]


class FakeScenes:
    """A SceneSet look-alike: n 32x32 scenes with 1-2 rectangular items; optional removal renders."""

    def __init__(self, n: int = 5, removals: bool = False, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.split = "test"
        self.images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        self.labels = np.zeros((n, 10), np.float32)
        self.item_classes = np.full((n, 2), -1, np.int64)
        self.item_masks = np.zeros((n, 2, 32, 32), bool)
        self.removal_images = np.zeros((n, 2, 32, 32, 3), np.uint8) if removals else None
        for i in range(n):
            k = 1 + i % 2
            classes = rng.choice(10, size=k, replace=False)
            for j, c in enumerate(classes):
                y, x = 16 * j, int(rng.integers(0, 16))
                self.item_classes[i, j] = c
                self.item_masks[i, j, y:y + 16, x:x + 16] = True
                self.labels[i, c] = 1
                if removals:
                    r = self.images[i].copy()
                    r[y:y + 16, x:x + 16] = 0
                    self.removal_images[i, j] = r

    def __len__(self) -> int:
        return len(self.images)


@pytest.fixture(scope="module")
def model():
    from caap_lens import HookedViT

    timm_model = make_timm("vit_tiny_patch16_224", seed=3, depth=2, img_size=32, patch_size=8, num_classes=10)
    return HookedViT.from_timm(timm_model)


def plan_for(**kw) -> Plan:
    base = dict(methods=METHODS, metrics=["deletion", "insertion", "positive", "pointing", "auroc"], score="sigmoid",
                curve_steps=4, chunk=2)
    base.update(kw)
    return Plan(**base)


def table_of(results) -> dict:
    d = results.to_dict(per_unit=True)
    d["meta"] = {k: v for k, v in d["meta"].items() if k not in ("store", "parts", "code_versions")}
    d.pop("seconds_per_unit")
    return d


# ------------------------------------------------------------------------------------------ plan
def test_plan_hash_is_stable_and_covers_what_defines_the_numbers():
    a = plan_for()
    assert a.hash() == plan_for().hash() == Plan.from_dict(a.to_dict()).hash()
    assert a.hash() == plan_for(batch_size=7).hash()  # a memory knob only
    assert a.hash() != plan_for(chunk=3).hash()
    assert a.hash() != plan_for(methods=["caap", MethodSpec("rollout", options={"head_fusion": "max"})]).hash()
    assert a.hash() != plan_for(targets="predicted").hash()


def test_plan_from_toml_and_bad_plans(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text('targets = "all_present"\nmetrics = ["deletion", "pointing"]\nscore = "sigmoid"\n'
                    '[[methods]]\nname = "caap"\n[[methods]]\nname = "caap_blur"\nmethod = "caap"\n'
                    'options = { context = "blur", layers = [0, 1] }\n')
    plan = Plan.from_toml(path).validate()
    assert [m.name for m in plan.methods] == ["caap", "caap_blur"]
    assert plan.methods[1].call_options() == {"context": "blur", "layers": (0, 1)}
    for bad, word in ((dict(methods=["nope"]), "unknown method"), (dict(metrics=["nope"]), "unknown metric"),
                      (dict(targets="some"), "targets policy"), (dict(methods=["caap", "caap"]), "duplicate"),
                      (dict(reference="x"), "reference"), (dict(chunk=0), "chunk")):
        with pytest.raises(PlanError, match=word):
            plan_for(**bad).validate()
    with pytest.raises(PlanError, match="unknown plan key"):
        Plan.from_dict({"methods": ["caap"], "metricz": []})


def test_shard_is_disjoint_and_covering():
    for n in range(0, 12):
        for world in (1, 2, 3, 5):
            parts = [list(shard(n, r, world)) for r in range(world)]
            assert sorted(sum(parts, [])) == list(range(n))
            assert all(p == list(range(p[0], p[-1] + 1)) for p in parts if p)


def test_t_test_and_holm():
    assert abs(t_test_p(2.2281388519649385, 10) - 0.05) < 1e-6
    assert abs(t_test_p(1.959963984540054, 1e7) - 0.05) < 1e-4
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan}) == {"a": 0.03, "b": 0.06, "c": 0.06, "d": math.nan} \
        or math.isnan(holm({"d": math.nan})["d"])


# ------------------------------------------------------------------------------------- the run
def test_run_tables_and_files(model, tmp_path):
    source = SceneSource(FakeScenes(5), name="fake")
    run = evaluate(model, source, plan_for(), tmp_path / "s", progress=False, log=lambda s: None)
    r = run.results
    assert run.units == 7 and run.rows == 7 * 3 and run.chunks_done == 3
    assert r.meta["units"] == 7 and r.meta["items_done"] == 5 and r.meta["duplicates"] == 0
    for row in METHODS:
        for k in r.metrics:
            c = r.summary[row][k]
            assert c["n"] + c["n_dropped"] + c["n_skipped"] + c["n_missing"] == 7
            if c["n"] >= 2 and not math.isnan(c["lo"]):
                assert c["lo"] - 1e-9 <= c["mean"] <= c["hi"] + 1e-9
    assert set(r.paired) == {"rollout", "random"} and "p_holm" in r.paired["rollout"]["deletion"]
    assert set(r.ranks["deletion"]) == {"caap", "rollout"}  # random rows are not ranked
    for cell in r.ranks["deletion"].values():
        assert 1 <= cell["lo"] <= cell["rank"] <= cell["hi"] <= 2
    assert len(r.curves["deletion"]["caap"]) == 5  # 4 steps + the 0 step
    md = (tmp_path / "s" / "results.md").read_text()
    assert "## Main table" in md and "(7)" in md and "Holm" in md and "bootstrap" in md
    page = (tmp_path / "s" / "results.html").read_text()
    assert "plotly" in page.lower() and 'src="https://cdn' not in page and "<table>" in page
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    assert saved["summary"]["caap"]["deletion"]["n"] == 7


def test_resume_after_a_crash_equals_an_uninterrupted_run(model, tmp_path):
    source = SceneSource(FakeScenes(5), name="fake")
    plan = plan_for()
    full = evaluate(model, source, plan, tmp_path / "full", progress=False, log=lambda s: None)

    class Crash(Exception):
        pass

    def crash(done):
        if done == 2:
            raise Crash

    with pytest.raises(Crash):
        evaluate(model, source, plan, tmp_path / "cut", progress=False, log=lambda s: None, after_chunk=crash)
    assert len(list((tmp_path / "cut" / "parts").glob("*.parquet"))) == 2
    again = evaluate(model, source, plan, tmp_path / "cut", progress=False, log=lambda s: None)
    assert again.chunks_skipped == 2 and again.chunks_done == 1
    assert table_of(again.results) == table_of(full.results)
    third = evaluate(model, source, plan, tmp_path / "cut", progress=False, log=lambda s: None)
    assert third.chunks_done == 0 and third.chunks_skipped == 3 and third.results.meta["duplicates"] == 0


def test_truncated_part_is_detected_and_redone(model, tmp_path):
    source = SceneSource(FakeScenes(4), name="fake")
    plan = plan_for()
    first = evaluate(model, source, plan, tmp_path / "s", progress=False, log=lambda s: None)
    parts = sorted((tmp_path / "s" / "parts").glob("*.parquet"))
    data = parts[0].read_bytes()
    parts[0].write_bytes(data[: len(data) // 2])  # a truncated file
    parts[1].write_bytes(b"garbage")  # and a corrupt one
    lines: list[str] = []
    again = evaluate(model, source, plan, tmp_path / "s", progress=False, log=lines.append)
    assert sum("corrupt" in line for line in lines) == 3  # two reports and the summary line
    assert len(again.corrupt) == 2 and "2 corrupt part(s) redone" in again.line()
    assert again.chunks_done == 2 and again.chunks_skipped == 0
    assert len(list((tmp_path / "s" / "corrupt").iterdir())) == 2
    assert table_of(again.results) == table_of(first.results)


def test_plan_change_and_other_data_are_refused(model, tmp_path):
    source = SceneSource(FakeScenes(2), name="fake")
    evaluate(model, source, plan_for(), tmp_path / "s", progress=False, log=lambda s: None)
    with pytest.raises(PlanMismatch, match="another store directory"):
        evaluate(model, source, plan_for(curve_steps=3), tmp_path / "s", progress=False, log=lambda s: None)
    with pytest.raises(PlanMismatch, match="data source"):
        evaluate(model, SceneSource(FakeScenes(3), name="fake"), plan_for(), tmp_path / "s", progress=False,
                 log=lambda s: None)


def test_empty_data_set(model, tmp_path):
    run = evaluate(model, ListSource([], name="empty"), plan_for(), tmp_path / "s", progress=False,
                   log=lambda s: None)
    assert run.units == 0 and run.results.meta["units"] == 0
    assert "0 (image, target) units" in run.results.to_markdown()
    run.results.to_html(tmp_path / "x.html")


def test_manual_shards_smaller_than_ranks_merge_to_the_one_process_table(model, tmp_path):
    """3 independent jobs (``shard=(rank, 3)``, no process group) on 2 chunks: the last one gets none."""
    source = SceneSource(FakeScenes(3), name="fake")
    plan = plan_for()
    one = evaluate(model, source, plan, tmp_path / "one", progress=False, log=lambda s: None)
    for rank in (2, 1, 0):  # any order; the chunk-less rank first
        run = evaluate(model, source, plan, tmp_path / "three", progress=False, merge=False, log=lambda s: None,
                       shard=(rank, 3))
        assert run.chunks == (1 if rank < 2 else 0)
    names = {p.name[:5] for p in (tmp_path / "three" / "parts").glob("*.parquet")}
    assert names == {"r0000", "r0001"}
    assert table_of(merge(tmp_path / "three")) == table_of(one.results)


def test_removal_and_specificity_metrics_are_wired_and_skips_counted(model, tmp_path, monkeypatch):
    import caap_lens.metrics as published

    seen = {}

    def object_removal(maps, item_masks, true_effects, *, grid=None):
        seen["removal"] = (maps.shape, item_masks.shape, true_effects.clone())
        return torch.nan_to_num(true_effects, nan=0.0).sum(1)

    def target_specificity(maps, target_masks, other_masks, *, grid=None):
        seen["spec"] = (target_masks.shape, other_masks.shape)
        return torch.zeros(maps.shape[0])

    monkeypatch.setattr(published, "object_removal", object_removal, raising=False)
    monkeypatch.setattr(published, "target_specificity", target_specificity, raising=False)
    scenes = FakeScenes(4, removals=True)
    plan = plan_for(methods=["caap"], metrics=["pointing", "object_removal", "target_specificity"], chunk=4)
    run = evaluate(model, SceneSource(scenes, name="fake"), plan, tmp_path / "s", progress=False, log=lambda s: None)
    shape, masks_shape, effects = seen["removal"]
    assert masks_shape[1] == 2 and effects.shape == (6, 2)
    # true effect = score(scene) - score(scene without item k), NaN for padded items
    from caap_lens.attribution.scores import sigmoid

    x = model.preprocess(scenes.images[:1])
    x0 = model.preprocess(scenes.removal_images[0, :1])
    with torch.no_grad():
        t = int(scenes.item_classes[0, 0])
        expected = float(sigmoid(model(x), torch.tensor([t])) - sigmoid(model(x0), torch.tensor([t])))
    assert abs(float(effects[0, 0]) - expected) < 1e-5 and math.isnan(float(effects[0, 1]))
    s = run.results.summary["caap"]
    # scenes 0 and 2 hold one item: no other class, skipped with a reason
    assert s["target_specificity"]["n"] == 4 and s["target_specificity"]["n_skipped"] == 2
    assert "no other labelled class" in run.results.to_markdown()
    # without removal images the metric is skipped, counted
    run2 = evaluate(model, SceneSource(FakeScenes(4), name="fake"), plan, tmp_path / "t", progress=False,
                    log=lambda s: None)
    assert run2.results.summary["caap"]["object_removal"]["n_skipped"] == 6
    assert run2.results.skipped["object_removal"] == {"no object-removal images": 6}


def test_predicted_and_labelled_policies(model, tmp_path):
    source = SceneSource(FakeScenes(3), name="fake")
    for policy in ("predicted", "labelled"):
        run = evaluate(model, source, plan_for(targets=policy, metrics=["deletion"]), tmp_path / policy,
                       progress=False, log=lambda s: None)
        assert run.units == 3


def test_image_folder_source(tmp_path):
    from PIL import Image

    (tmp_path / "img" / "sub").mkdir(parents=True)
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "img" / f"{name}.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "sub" / "b.png")
    (tmp_path / "labels.csv").write_text("file,labels\na.png,3\nsub/b,1;4\n")
    src = ImageFolderSource(tmp_path / "img", masks=tmp_path / "masks", labels=tmp_path / "labels.csv")
    assert src.ids() == ["img/a", "img/sub/b"]
    a, b = src[0], src[1]
    assert a.targets == [3] and a.masks is None and a.image.shape == (8, 8, 3)
    assert b.targets == [1, 4] and b.masks[1][:4].all() and not b.masks[4][4:].any()
    with pytest.raises(FileNotFoundError):
        ImageFolderSource(tmp_path / "nope")


def test_cli_evaluate_merge_and_bad_input(tmp_path, capsys):
    from caap_lens.cli import main

    store = tmp_path / "s"
    assert main(["evaluate", str(store), "--methods", "caap,bogus"]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["evaluate", str(store), "--metrics", "nope"]) == 2
    assert main(["evaluate", str(store), "--plan", str(tmp_path / "missing.toml")]) == 2
    assert main(["evaluate", str(store), "--data", str(tmp_path / "missing"), "--model", "vit_tiny_patch16_224"]) == 2
    assert main(["evaluate", str(tmp_path / "none"), "--merge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("caap-lens: error:") for line in err) and len(err) == 4


def test_hf_dataset_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from caap_lens.evaluation import HFDatasetSource

    images = [Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [2, 0, 5]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    src = HFDatasetSource(tmp_path / "ds", image_column="image", label_column="label")
    assert len(src) == 3 and src.ids() == ["ds/test/0", "ds/test/1", "ds/test/2"]
    item = src[2]
    assert item.targets == [5] and item.image.shape == (8, 8, 3) and int(item.image[0, 0, 0]) == 80
    with pytest.raises(ValueError, match="columns"):
        HFDatasetSource(tmp_path / "ds", image_column="img")


def test_cli_evaluate_runs_resumes_and_refuses_another_plan(tmp_path, capsys):
    try:
        from caap_lens.loading.bundled import bundled_path

        bundled_path("fashion-scenes-vit", "test_scenes.npz")
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"no bundled model: {err}")
    from caap_lens.cli import main

    store = tmp_path / "s"
    args = ["evaluate", str(store), "--methods", "caap,rollout,random", "--metrics", "deletion,pointing",
            "--curve-steps", "2", "--limit", "2", "--chunk", "1", "--no-progress"]
    assert main(args) == 0
    assert (store / "results.md").exists() and (store / "results.html").exists()
    first = json.loads((store / "results.json").read_text())
    assert first["plan"]["score"] == "sigmoid" and first["meta"]["items_done"] == 2
    capsys.readouterr()
    assert main(args) == 0
    assert "0 chunk(s) computed, 2 already committed" in capsys.readouterr().err
    assert main([*args[:-2], "3", "--no-progress"]) == 2  # --chunk 3: another plan
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written under plan" in err[0]
    assert main(["evaluate", str(store), "--merge", "--out", str(tmp_path / "tables")]) == 0
    assert (tmp_path / "tables" / "results.md").read_text().count("|") > 10


def test_maps_saved_by_id(model, tmp_path):
    source = SceneSource(FakeScenes(3), name="fake")
    evaluate(model, source, plan_for(save_maps=True, metrics=["pointing"]), tmp_path / "s", progress=False,
             log=lambda s: None)
    shards = sorted((tmp_path / "s" / "maps").glob("*.npz"))
    assert len(shards) == 2  # one per committed chunk
    keys = [k for p in shards for k in np.load(p).files]
    assert len(keys) == 4 * len(METHODS) and all(k.count("|") == 2 for k in keys)  # 4 units x 3 rows
    one = np.load(shards[0])
    key = next(k for k in one.files if k.startswith("caap|fake/0|"))
    assert one[key].shape == tuple(model.grid.grid_size)


def test_code_versions_are_recorded_and_counted(model, tmp_path, monkeypatch):
    import caap_lens.evaluation.execution as ex

    source = SceneSource(FakeScenes(4), name="fake")
    plan = plan_for(metrics=["pointing"])

    def crash(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, source, plan, tmp_path / "s", progress=False, log=lambda s: None, after_chunk=crash)
    monkeypatch.setattr(ex, "_CODE", "0123456789abcdef")  # as if the library had been edited in between
    lines: list[str] = []
    run = evaluate(model, source, plan, tmp_path / "s", progress=False, log=lines.append)
    assert any("started under caap_lens code" in line for line in lines)
    assert len(run.results.meta["code_versions"]) == 2
    assert "versions of the caap_lens code" in run.results.to_markdown()
