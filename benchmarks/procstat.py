"""CPU time and memory of a process, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads).

    From ``/proc/<pid>/stat`` fields 14 (utime) and 15 (stime), in clock ticks.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        text = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``/proc/<pid>/task/<tid>/children``), parents
    first: a server with ``--num_workers`` is its supervisor and the workers."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    found.extend(int(child) for child in f.read().split())
            except OSError:
                continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (see
    :func:`process_tree`); a process that exits in between counts as 0."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            continue
    return total


def memory_bytes(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak resident set size) and ``VmRSS`` from ``/proc/<pid>/status``, bytes."""
    result = {"VmHWM": 0, "VmRSS": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in result:
                result[key] = int(value.split()[0]) * 1024
    return result


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), bytes."""
    return memory_bytes(pid)["VmHWM"]


def machine_cpu_ticks() -> tuple[int, int]:
    """``(busy, total)`` clock ticks of all CPUs together since boot, from ``/proc/stat``.

    Busy is everything but idle and iowait (steal included: time the hypervisor gave to
    someone else is time this machine did not get).
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    return total - idle, total


class MachineCpu:
    """Machine-wide CPU use between :meth:`start` and :meth:`stop`, in percent of one core."""

    def __init__(self) -> None:
        self._start = machine_cpu_ticks()
        self._cpus = os.cpu_count() or 1

    def start(self) -> None:
        self._start = machine_cpu_ticks()

    def stop(self) -> float:
        busy, total = machine_cpu_ticks()
        d_total = total - self._start[1]
        if d_total <= 0:
            return 0.0
        return 100.0 * self._cpus * (busy - self._start[0]) / d_total
