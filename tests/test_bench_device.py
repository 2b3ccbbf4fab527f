"""`benchmarks/bench_device.py` runs on the CPU with a tiny model and writes the figures it promises."""

from __future__ import annotations

import json

from benchmarks import bench_device


def test_bench_device_on_cpu_writes_json_and_markdown(tmp_path):
    path = tmp_path / "device.json"
    argv = ["--device", "cpu", "--arch", "vit_tiny_patch16_224", "--depth", "2", "--img-size", "32",
            "--repeats", "1", "--memory-batch-sizes", "2,8", "--matmul-rows", "256", "--sweep-patches", "2",
            "--json", str(path)]
    assert bench_device.main(argv) == 0
    out = json.loads(path.read_text())
    assert out["device"] == "cpu" and out["device_name"] and out["cpu"]
    assert out["dtypes"] == ["fp32", "bf16"]  # fp16 skipped on a CPU, with a note saying so
    assert any("fp16" in note for note in out["notes"])
    assert set(out["matmul_gflops"]) == {"fp32", "bf16"} and all(v > 0 for v in out["matmul_gflops"].values())
    assert set(out["map_seconds_per_image"]) == {"fp32", "bf16"}
    assert out["sweep"]["windows"] == 3 and out["sweep"]["patches_measured"] == 2  # depth 2: 3 windows
    assert out["sweep"]["seconds_per_image_all_patches"]["fp32"] >= out["sweep"]["seconds_per_image"]["fp32"]
    assert [(m["batch_size"], m["dtype"]) for m in out["memory"]] == [(2, "fp32"), (2, "bf16"), (8, "fp32"), (8, "bf16")]
    assert "RSS" in out["memory_method"]
    assert out["naive"]["max_abs_diff_vs_fp32_map"] < 1e-4  # the loop computes the same map
    assert set(out["naive"]["speedup"]) == {"fp32", "bf16"}
    md = path.with_suffix(".md").read_text()
    assert "| one CAAP map (s per image) |" in md and "fp16 skipped" in md and "| batch_size |" in md
