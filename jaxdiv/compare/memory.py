"""Peak resident memory of this process, measurable per phase (no heavy imports: peer
benchmark children use it too).

`ru_maxrss` is not usable for either purpose: it never resets, and Linux carries it across
fork + exec, so a child started by a large parent reports at least the parent's size. The
kernel's per-address-space high-water mark (VmHWM) starts afresh at exec and can be reset.
"""

from __future__ import annotations

import resource
from pathlib import Path


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set of this process since exec or the last reset (VmHWM), in MiB;
    `ru_maxrss` where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
