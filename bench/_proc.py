"""What the kernel says of a process's memory (``/proc/PID/status``), read now or sampled."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of ``/proc/PID/status`` (VmRSS, VmHWM, RssAnon...); {} once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


class PeakSampler:
    """Samples ``fields`` of some processes every ``interval`` s while in use, each summed over
    the processes, and keeps each one's peak (kB)."""

    def __init__(self, pids: Sequence[int], fields: Sequence[str], interval: float) -> None:
        self.peak_kb = dict.fromkeys(fields, 0)
        self._pids = list(pids)
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            statuses = [proc_status(pid) for pid in self._pids]
            for field, peak in self.peak_kb.items():
                now = sum(status.get(field, 0) for status in statuses)
                self.peak_kb[field] = max(peak, now)
            if self._stopped.wait(self._interval):
                return
