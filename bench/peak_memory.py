"""Peak memory of a block of benchmark code: RssAnon (anonymous memory, i.e. not the pages of memory-mapped files)
and RssFile from /proc/self/status, sampled in a background thread; wall and CPU time of the block too."""

from __future__ import annotations

import threading
import time


def rss_mb(field: str = "RssAnon") -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class PeakMemory:
    """Largest RssAnon during the block (absolute and above the value at its start), sampled in a thread."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval

    def __enter__(self):
        self.start = rss_mb()
        self.peak = self.start
        self.peak_file = rss_mb("RssFile")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            self.peak_file = max(self.peak_file, rss_mb("RssFile"))
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.delta = self.peak - self.start
        return False
