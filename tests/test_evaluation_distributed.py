"""Multi-process checks of the evaluation harness (slow: each starts fresh Python processes).

* ``torchrun --nproc_per_node 2`` (gloo, CPU) gives the same merged table as one process, also when
  the data set has fewer chunks than ranks;
* a run killed with SIGKILL in the middle and resumed gives the same table as an uninterrupted run,
  with no unit missing or counted twice.

This file is also the worker the tests launch: ``python tests/test_evaluation_distributed.py STORE N``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE.parent)}


def worker(stores: list[str], n_scenes: list[int], pause_after: int | None) -> None:
    """Runs the plan of test_evaluation on the tiny model, one store per scene count."""
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    from conftest import make_timm
    from test_evaluation import FakeScenes, plan_for

    from caap_lens import HookedViT
    from caap_lens.evaluation import SceneSource, evaluate

    grouped = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if grouped:  # one process group for both stores (evaluate uses it as it finds it)
        dist.init_process_group("gloo")
    model = HookedViT.from_timm(make_timm("vit_tiny_patch16_224", seed=3, depth=2, img_size=32, patch_size=8,
                                          num_classes=10))

    def pause(done: int) -> None:
        if pause_after is not None and done == pause_after:
            print("PAUSED", flush=True)
            time.sleep(120)  # the test kills the process here

    for store, n in zip(stores, n_scenes):
        evaluate(model, SceneSource(FakeScenes(n), name="fake"), plan_for(chunk=1), store, progress=False,
                 after_chunk=pause)
    if grouped:
        dist.destroy_process_group()


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300, **kw)


def _tables(store: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from test_evaluation import table_of

    from caap_lens.evaluation import merge

    return table_of(merge(store))


@pytest.mark.slow
def test_two_processes_give_the_one_process_table(tmp_path):
    one = [str(tmp_path / "one5"), str(tmp_path / "one1")]
    two = [str(tmp_path / "two5"), str(tmp_path / "two1")]
    p1 = _run([sys.executable, __file__, ",".join(one), "5,1"])
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               ",".join(two), "5,1"])
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "rank 1/2" in p2.stderr and "rank 0/2" in p2.stderr
    ranks = {p.name[:5] for p in (tmp_path / "two5" / "parts").glob("*.parquet")}
    assert ranks == {"r0000", "r0001"}  # each rank wrote its own parts
    # 1 scene, 2 ranks: rank 1 has nothing to do and still finishes
    assert {p.name[:5] for p in (tmp_path / "two1" / "parts").glob("*.parquet")} == {"r0000"}
    for a, b in ((tmp_path / "one5", tmp_path / "two5"), (tmp_path / "one1", tmp_path / "two1")):
        ta, tb = _tables(a), _tables(b)
        assert ta == tb
        assert tb["meta"]["duplicates"] == 0 and tb["meta"]["items_done"] == tb["meta"]["items_expected"]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = _run([sys.executable, __file__, str(full), "5"])
    assert p.returncode == 0, p.stderr[-3000:]
    proc = subprocess.Popen([sys.executable, __file__, str(cut), "5", "3"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the worker pauses after its 3rd chunk
        assert line.strip() == "PAUSED", proc.stderr.read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert len(list((cut / "parts").glob("*.parquet"))) == 3
    r = _run([sys.executable, __file__, str(cut), "5"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 chunk(s) computed, 3 already committed" in r.stderr
    tf, tc = _tables(full), _tables(cut)
    assert tc == tf
    assert tc["meta"]["duplicates"] == 0 and tc["meta"]["units"] == 7
    assert tc["meta"]["items_done"] == tc["meta"]["items_expected"] == 5


@pytest.mark.slow
def test_cli_under_torchrun_equals_one_process(tmp_path):
    """`torchrun -m caap_lens evaluate` on the bundled model: per-unit values bit for bit as one process."""
    try:
        from caap_lens.loading.bundled import bundled_path

        bundled_path("fashion-scenes-vit", "test_scenes.npz")
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"no bundled model: {err}")
    flags = ["--methods", "caap,rollout,random", "--metrics", "deletion,pointing", "--curve-steps", "2",
             "--limit", "3", "--chunk", "1", "--no-progress"]
    one = _run([sys.executable, "-m", "caap_lens", "evaluate", str(tmp_path / "one"), *flags])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "caap_lens", "evaluate", str(tmp_path / "two"), *flags])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 0/2" in two.stderr and "rank 1/2" in two.stderr
    assert _tables(tmp_path / "one") == _tables(tmp_path / "two")


if __name__ == "__main__":
    stores = sys.argv[1].split(",")
    counts = [int(x) for x in sys.argv[2].split(",")]
    worker(stores, counts, int(sys.argv[3]) if len(sys.argv) > 3 else None)
