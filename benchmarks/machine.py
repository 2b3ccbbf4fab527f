"""What the benchmarks say about the machine they ran on, and how they measure memory on a CPU."""

from __future__ import annotations

import platform
import subprocess
import threading
import time
from typing import Callable


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` gives it (or what ``platform`` knows)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def peak_rss_during(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(RSS before, peak RSS during, seconds) of ``fn()``, in MB, sampling the current RSS every 2 ms.

    ``ru_maxrss`` cannot be used: it already holds the peak of loading the model.
    """
    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    return before / 2**20, peak[0] / 2**20, seconds
