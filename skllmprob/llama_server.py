"""llama.cpp models loaded the way the embedded backend loads them, for other tools.

llama.cpp repacks quantized CPU weights into layouts that its fastest kernels read
(the "extra buffer types"). On CPUs that report AMX (``amx_tile``, ``amx_int8`` in
``/proc/cpuinfo``) some of those kernels die with an illegal instruction or a
segmentation fault on the first evaluation, inside virtual machines in particular; the
process exits with status 132 or 139 and no Python traceback. skllmprob's in-process
backend loads every model with ``use_extra_bufts=False`` and is not affected. Plain
``llama_cpp.Llama(...)`` and ``python -m llama_cpp.server`` use llama.cpp's defaults;
this module gives them the same protection:

- :func:`plain_weight_layouts`: a context manager under which every model that
  llama-cpp-python loads keeps the plain weight layouts;
- ``python -m skllmprob.llama_server ARGS``: llama-cpp-python's OpenAI-compatible
  server (``python -m llama_cpp.server ARGS``, same arguments) with that protection.

The numbers do not change: the repacked layouts are a speed-up of the same
arithmetic on CPUs where they work.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

__all__ = ["cpu_has_amx", "main", "plain_weight_layouts"]

_AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU reports AMX, from ``/proc/cpuinfo`` (False where unknown).

    Parameters
    ----------
    cpuinfo : str, optional
        The text of ``/proc/cpuinfo``; read from the file when not given.

    Examples
    --------
    >>> cpu_has_amx("flags : fpu sse2 avx512f amx_bf16 amx_tile amx_int8")
    True
    >>> cpu_has_amx("flags : fpu sse2 avx2")
    False
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    words = set(cpuinfo.split())
    return any(flag in words for flag in _AMX_FLAGS)


def _import_low_level():
    try:
        from llama_cpp import llama_cpp as low
    except ImportError as e:
        raise ImportError(
            "skllmprob.llama_server needs llama-cpp-python: pip install 'skllmprob[server]'"
        ) from e
    return low


def _protect(low) -> tuple[object, object]:
    """Wrap ``llama_model_default_params``; return (module, original function)."""
    original = low.llama_model_default_params
    if getattr(original, "_skllmprob_plain_layouts", False):
        return low, original

    def default_params():
        params = original()
        params.use_extra_bufts = False
        return params

    default_params._skllmprob_plain_layouts = True  # type: ignore[attr-defined]
    default_params.__wrapped__ = original  # type: ignore[attr-defined]
    low.llama_model_default_params = default_params
    return low, original


@contextlib.contextmanager
def plain_weight_layouts() -> Iterator[None]:
    """Load llama-cpp-python models without llama.cpp's repacked weight layouts.

    Every ``llama_cpp.Llama`` created inside the block starts from model parameters
    with ``use_extra_bufts=False``, as skllmprob's embedded backend does, so that it
    does not crash on CPUs with AMX. The model keeps the setting after the block.

    Examples
    --------
    ``llama_cpp.Llama(model_path=...)`` inside the block loads the model with these
    parameters:

    >>> from llama_cpp import llama_cpp as low
    >>> with plain_weight_layouts():
    ...     low.llama_model_default_params().use_extra_bufts
    False
    """
    low, original = _protect(_import_low_level())
    try:
        yield
    finally:
        low.llama_model_default_params = original


def main(argv: Sequence[str] | None = None) -> None:
    """Run llama-cpp-python's server with plain weight layouts (same arguments)."""
    _protect(_import_low_level())
    try:
        from llama_cpp.server.__main__ import main as server_main
    except ImportError as e:
        raise ImportError(
            "skllmprob.llama_server needs llama-cpp-python's server extra: "
            "pip install 'skllmprob[server]'"
        ) from e
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    server_main()


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess
    main()
