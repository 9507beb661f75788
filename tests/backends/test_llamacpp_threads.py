"""The default thread count of the embedded model (no model or llama.cpp needed)."""

from __future__ import annotations

import os

import pytest

from skllmprob.backends.llamacpp import LlamaCppBackend, threads
from skllmprob.backends.llamacpp.threads import default_n_threads, parse_cpuinfo


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"cpus": 2, "physical_cores": 2}, 2),  # this host: 2 cores, 1 thread each
        ({"cpus": 8, "physical_cores": 4}, 4),  # hyper-threads add nothing
        ({"cpus": 2, "physical_cores": 1}, 1),  # one core and its sibling
        ({"cpus": 6, "physical_cores": None}, 3),  # topology unknown: half
        ({"cpus": 1, "physical_cores": None}, 1),
        ({"cpus": 16, "physical_cores": 8, "cpu_quota": 2.5}, 2),  # a container
        ({"cpus": 4, "physical_cores": 4, "cpu_quota": 0.5}, 1),
        ({"cpus": 2, "physical_cores": 2, "thread_limit": 1}, 1),  # a joblib worker
        ({"cpus": 8, "physical_cores": 4, "thread_limit": 6}, 4),  # a limit, not a target
        ({"cpus": 2, "physical_cores": 4}, 2),  # never more than the usable CPUs
    ],
)
def test_default_n_threads(kw, expected):
    assert default_n_threads(**kw) == expected


def test_parse_cpuinfo_maps_processors_to_cores():
    text = "".join(
        f"processor\t: {p}\nmodel name\t: x\nphysical id\t: 0\ncore id\t\t: {p % 2}\n\n"
        for p in range(4)
    )
    table = parse_cpuinfo(text + "processor\t: 4\n")  # no ids: left out
    assert table == {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}
    assert len(set(table.values())) == 2


def test_physical_cores_from_sysfs(tmp_path):
    # 4 logical CPUs on 2 cores of one package; the process may use CPUs 0 and 2.
    for cpu, core in [(0, 0), (1, 1), (2, 0), (3, 1)]:
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert threads._physical_cores({0, 1, 2, 3}, str(tmp_path)) == 2
    assert threads._physical_cores({0, 2}, str(tmp_path)) == 1  # siblings
    assert threads._physical_cores({0, 1}, str(tmp_path)) == 2


def test_cpu_quota_and_thread_limit(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert threads._cpu_quota(str(tmp_path)) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads._cpu_quota(str(v1)) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert threads._cpu_quota(str(v1)) == 1.0
    assert threads._cpu_quota(str(tmp_path / "none")) is None
    assert threads._thread_limit({"OMP_NUM_THREADS": "3"}) == 3
    assert threads._thread_limit({"OMP_NUM_THREADS": "4,2"}) == 4
    for bad in ({}, {"OMP_NUM_THREADS": ""}, {"OMP_NUM_THREADS": "0"}, {"OMP_NUM_THREADS": "x"}):
        assert threads._thread_limit(bad) is None


def test_this_process_and_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n = threads.process_n_threads()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert 1 <= n <= (usable or os.cpu_count() or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.process_n_threads() == 1


@pytest.mark.slow
def test_joblib_workers_take_one_share_each():
    joblib = pytest.importorskip("joblib")
    from joblib.externals.loky import cpu_count

    n_jobs = 2
    got = joblib.Parallel(n_jobs=n_jobs)(
        joblib.delayed(threads.process_n_threads)() for _ in range(n_jobs)
    )
    parent_limit = threads._thread_limit(os.environ)
    share = parent_limit or max(cpu_count() // n_jobs, 1)  # what joblib allows a worker
    assert all(1 <= g <= share for g in got)


def test_thread_count_is_not_part_of_the_identity_or_the_resource_key(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(1000))
    base = LlamaCppBackend(model)
    assert LlamaCppBackend(model, n_threads=3).identity() == base.identity()
    # The default is resolved when the model is loaded: the key holds None, not the
    # count of this process, so clones in one process share one loaded model.
    assert base._resource_key()[3] is None
