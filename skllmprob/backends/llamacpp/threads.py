"""The default number of CPU threads per decode call (``n_threads=None``).

llama.cpp's threads spin while they wait for each other, so more threads than
free cores is much slower, not faster, and a hyper-thread adds little to its
sibling. The default is therefore the number of *physical cores* among the CPUs
this process may use (its CPU affinity), at most its CPU quota (cgroups), and at
most ``OMP_NUM_THREADS`` when that is set: joblib's default process backend
(loky, behind scikit-learn's ``n_jobs``) sets it in each worker to
``max(cpu_count // n_jobs, 1)``, so that ``n_jobs`` workers, each with its own
model, do not oversubscribe the CPU. Where the topology is unknown it is half
the usable CPUs, as llama-cpp-python does.

Examples
--------
>>> default_n_threads(cpus=2, physical_cores=2)
2
>>> default_n_threads(cpus=8, physical_cores=4)  # 4 cores, 2 hyper-threads each
4
>>> default_n_threads(cpus=2, physical_cores=2, thread_limit=1)  # a joblib worker
1
>>> default_n_threads(cpus=16, physical_cores=None, cpu_quota=2.5)
2
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

__all__ = ["default_n_threads", "parse_cpuinfo", "process_n_threads"]

_SYS_CPU = "/sys/devices/system/cpu"
_CGROUP = "/sys/fs/cgroup"


def default_n_threads(
    cpus: int,
    physical_cores: int | None = None,
    *,
    cpu_quota: float | None = None,
    thread_limit: int | None = None,
) -> int:
    """The default ``n_threads``.

    Parameters
    ----------
    cpus : int
        Logical CPUs this process may run on.
    physical_cores : int or None
        Physical cores among those CPUs; ``None``: unknown (half of ``cpus``).
    cpu_quota : float or None
        CPUs' worth of time the process may use (a cgroup quota); ``None``: no quota.
    thread_limit : int or None
        A limit on threads per process (``OMP_NUM_THREADS``); ``None``: none.

    Returns
    -------
    int
        At least 1.
    """
    n = physical_cores if physical_cores is not None else cpus // 2
    n = min(n, cpus)
    if cpu_quota is not None:
        n = min(n, math.floor(cpu_quota))
    if thread_limit is not None:
        n = min(n, thread_limit)
    return max(1, n)


def process_n_threads() -> int:
    """:func:`default_n_threads` for this process, from what the system tells."""
    cpus = _usable_cpus()
    if cpus is None:  # no affinity information (macOS, Windows): today's rule
        return default_n_threads(os.cpu_count() or 2, thread_limit=_thread_limit(os.environ))
    return default_n_threads(
        len(cpus),
        _physical_cores(cpus),
        cpu_quota=_cpu_quota(),
        thread_limit=_thread_limit(os.environ),
    )


def _usable_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _thread_limit(environ: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` as a positive int (``"4,2"``: nested levels, the first
    counts), else ``None``."""
    value = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def _physical_cores(cpus: Iterable[int], sys_cpu: str = _SYS_CPU) -> int | None:
    """Distinct (package, core) pairs among ``cpus``, from sysfs or else from
    /proc/cpuinfo; ``None`` when neither tells for every CPU."""
    cpus = sorted(cpus)
    pairs = _sysfs_core_ids(cpus, sys_cpu)
    if pairs is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                table = parse_cpuinfo(f.read())
        except OSError:
            return None
        if not all(c in table for c in cpus):
            return None
        pairs = [table[c] for c in cpus]
    return len(set(pairs)) or None


def _sysfs_core_ids(cpus: list[int], sys_cpu: str) -> list[tuple[int, int]] | None:
    out = []
    for c in cpus:
        topology = os.path.join(sys_cpu, f"cpu{c}", "topology")
        try:
            with open(os.path.join(topology, "physical_package_id")) as f:
                package = int(f.read())
            with open(os.path.join(topology, "core_id")) as f:
                core = int(f.read())
        except (OSError, ValueError):
            return None
        out.append((package, core))
    return out


def parse_cpuinfo(text: str) -> dict[int, tuple[int, int]]:
    """``{processor: (physical id, core id)}`` from the text of /proc/cpuinfo
    (processors without both ids are left out).

    >>> parse_cpuinfo("processor : 0\\nphysical id : 0\\ncore id : 3\\n\\nprocessor : 1\\n")
    {0: (0, 3)}
    """
    out: dict[int, tuple[int, int]] = {}
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        try:
            cpu = int(fields["processor"])
            out[cpu] = (int(fields["physical id"]), int(fields["core id"]))
        except (KeyError, ValueError):
            continue
    return out


def _cpu_quota(cgroup: str = _CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 ``cpu.max``, or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); ``None``: no quota or unknown."""
    try:
        with open(os.path.join(cgroup, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
    except OSError:
        try:
            with open(os.path.join(cgroup, "cpu", "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(cgroup, "cpu", "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return q / p if q > 0 and p > 0 else None
