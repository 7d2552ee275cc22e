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
