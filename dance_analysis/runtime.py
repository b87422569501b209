"""Runtime knobs in one place: thread counts (BLAS, torch), stage timers and numba's on-disk compile cache.

None of these change a result; they change how long it takes. Each is a context manager or a small object so
the setting is undone when the block ends (tests and long-lived processes see the machine as they left it).
torch, threadpoolctl and numba are imported only when their knob is used, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator


# ----------------------------------------------------------------------------------------------- threads
@contextlib.contextmanager
def blas_threads(limit: int = 1) -> Iterator[None]:
    """Run the block with at most ``limit`` BLAS threads (numpy / scipy's OpenBLAS or MKL).

    The statistics work on many small products and eigen-decompositions (d x d, d <= 1024), for which a
    multi-threaded OpenBLAS mostly spins: on a busy 2-core machine one thread made a whole report 3-4 times
    faster (bench/report.py). threadpoolctl comes with scikit-learn; without it nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        yield
        return
    with threadpool_limits(limits=limit, user_api="blas"):
        yield


def single_threaded_blas() -> contextlib.AbstractContextManager[None]:
    """:func:`blas_threads` with one thread."""
    return blas_threads(1)


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, then restore the previous count (also on error).

    Tiny models run several times faster on one thread than on two busy ones: waking a thread team costs more
    than the work on matrices that small."""
    import torch  # heavy: only the callers that already use torch pay for it

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)



@contextlib.contextmanager
def faiss_threads(faiss, count: int = 1, *, enabled: bool = True) -> Iterator[None]:
    """Run the block with faiss' OpenMP threads at ``count`` (when ``enabled``), then restore the previous count
    (also on error). ``faiss`` is the module the caller searches with.

    Tiny products and PQ / HNSW builds run on one thread: waking a thread team costs more than tiny work, and a
    multi-threaded HNSW build is not deterministic."""
    if not enabled:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)

# ----------------------------------------------------------------------------------------------- timers
class Timer:
    """Seconds spent per stage, summed when a stage runs more than once (rounded to ``digits``).

    ``with timer.stage("ranking"): ...`` times a block; ``timer.add(stage, started)`` adds the time since
    ``started`` (a value of ``clock()``). ``seconds`` is a plain dict (JSON-able), optionally one that already
    holds earlier stages. ``clock`` defaults to :func:`time.perf_counter`.
    """

    def __init__(self, seconds: dict[str, float] | None = None, *, digits: int = 3,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds: dict[str, float] = {} if seconds is None else seconds
        self.digits = digits
        self.clock = clock

    def start(self) -> float:
        """The clock now (pass it to :meth:`add`)."""
        return self.clock()

    def add(self, stage: str, started: float) -> float:
        """Add the seconds since ``started`` to ``stage``; returns those seconds."""
        elapsed = self.clock() - started
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + elapsed, self.digits)
        return elapsed

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (also when it raises)."""
        started = self.clock()
        try:
            yield
        finally:
            self.add(name, started)


# ----------------------------------------------------------------------------------------------- numba
def enable_numba_cache(prefixes: tuple[str, ...] = ("umap", "pynndescent")) -> int:
    """Let numba cache the compiled code of umap-learn and pynndescent on disk.

    umap-learn compiles most of its numba functions without ``cache=True``, which costs tens of seconds in every
    new process (most of a report's time on a small collection). Switching the on-disk cache on for those
    dispatchers (of the already imported modules whose names start with ``prefixes``) before their first call
    makes that a one-off cost per installation; the compiled code and the results are the same. Functions numba
    cannot cache are left as they are. Returns how many were switched (0 without umap-learn or numba).
    """
    switched = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap.umap_  # noqa: F401  (imports every umap / pynndescent module that UMAP.fit uses)
            from numba.core.caching import NullCache
            from numba.core.registry import CPUDispatcher
    except Exception:  # an optimisation only
        return 0
    for name, module in list(sys.modules.items()):
        if not name.startswith(prefixes) or module is None:
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, CPUDispatcher) and isinstance(getattr(obj, "_cache", None), NullCache):
                try:
                    obj.enable_caching()
                    switched += 1
                except Exception:  # no writable cache location: compile as usual
                    pass
    return switched
