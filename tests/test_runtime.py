"""dance_analysis.runtime: thread limits that are undone, a timer that sums stages, numba's compile cache."""

from __future__ import annotations

import pytest
import threadpoolctl
import torch

from dance_analysis.runtime import (
    Timer,
    blas_threads,
    enable_numba_cache,
    faiss_threads,
    single_threaded_blas,
    torch_threads,
)


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]


def test_blas_threads_limits_every_blas_pool_inside_the_block_and_restores_it():
    before = _blas_threads()
    assert before, "numpy links a BLAS that threadpoolctl sees"
    with single_threaded_blas():
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before
    with pytest.raises(RuntimeError), blas_threads(1):
        raise RuntimeError("boom")
    assert _blas_threads() == before


def test_torch_threads_sets_and_restores_the_count_also_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError), torch_threads(target):
        raise ValueError("boom")
    assert torch.get_num_threads() == before


def test_timer_sums_stages_from_its_clock():
    ticks = iter([0.0, 1.25, 10.0, 10.5, 20.0, 20.0004, 30.0, 32.5])
    timer = Timer({"earlier": 2.0}, clock=lambda: next(ticks))
    with timer.stage("a"):
        pass
    with timer.stage("b"):
        pass
    started = timer.start()
    assert timer.add("a", started) == pytest.approx(0.0004)
    with pytest.raises(KeyError), timer.stage("c"):
        raise KeyError("boom")
    # by hand: a = 1.25 + 0.0004 rounded to 3 digits, b = 0.5, c = 2.5 (timed though it raised), earlier kept
    assert timer.seconds == {"earlier": 2.0, "a": 1.25, "b": 0.5, "c": 2.5}


def test_timer_measures_real_time():
    import time

    timer = Timer()
    with timer.stage("sleep"):
        time.sleep(0.05)
    assert 0.04 <= timer.seconds["sleep"] < 1.0


def test_enable_numba_cache_switches_umap_dispatchers_to_the_disk_cache():
    pytest.importorskip("umap")
    import sys

    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    enable_numba_cache()
    dispatchers = [obj for name, module in list(sys.modules.items())
                   if module is not None and name.startswith(("umap", "pynndescent"))
                   for obj in vars(module).values() if isinstance(obj, CPUDispatcher)]
    cached = [d for d in dispatchers if not isinstance(getattr(d, "_cache", None), NullCache)]
    # umap-learn's own functions are compiled without cache=True: without the switch most would hold a NullCache
    assert len(cached) > 0.8 * len(dispatchers)  # without it: 227 of 514 (umap-learn 0.5)
    assert enable_numba_cache() == 0  # nothing left that numba can cache


def test_faiss_threads_sets_and_restores_faiss_threads_also_on_error():
    import faiss

    before = faiss.omp_get_max_threads()
    wanted = 1 if before != 1 else 2
    with faiss_threads(faiss, wanted):
        assert faiss.omp_get_max_threads() == wanted
    assert faiss.omp_get_max_threads() == before
    with pytest.raises(RuntimeError), faiss_threads(faiss, wanted):
        assert faiss.omp_get_max_threads() == wanted
        raise RuntimeError("inside")
    assert faiss.omp_get_max_threads() == before
    with faiss_threads(faiss, wanted, enabled=False):   # disabled: the count is left alone
        assert faiss.omp_get_max_threads() == before
