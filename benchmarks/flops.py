"""FLOP accounting for ``bench train-cache``: what one training epoch costs in matmul arithmetic, and what the
machine's matmul does in the same process, so "how close to the FLOP limit" is a measured ratio, not a guess.

* ``count_flops(fn)``: the matmul FLOPs (mm, addmm, bmm, baddbmm, ...) that ``fn`` runs, forward and backward,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` from the shapes of the ops that really execute (2*m*n*k
  per matmul). Backward ops that autograd skips (no gradient for the cached input features) are not counted, so
  the number is what the CPU has to do, not the 3x-forward rule of thumb.
* ``matmul_gflops(n)``: a square float32 ``torch.matmul`` of size ``n`` on the current thread count, the best and
  the median of several timed repeats after a warm-up.
"""
from __future__ import annotations

import statistics
import time


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(n: int = 1024, repeats: int = 12) -> dict:
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    flops = 2 * n ** 3
    return {"n": n, "threads": torch.get_num_threads(), "best_gflops": round(flops / min(times) / 1e9, 1),
            "median_gflops": round(flops / statistics.median(times) / 1e9, 1)}
