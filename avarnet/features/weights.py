"""How backbone weights are named in a FeatureSpec: ``random:`` architectures and
``seed=<n>`` revisions, ``sha256:`` digests of local files, and the one-line hint for hub
weights that cannot be fetched. Shared by :mod:`~avarnet.features.audio` and
:mod:`~avarnet.features.visual`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["RANDOM_PREFIX", "hub_hint", "is_local", "parse_seed", "sha256_files"]

RANDOM_PREFIX = "random:"


def sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def parse_seed(text: str | None, what: str) -> int:
    """``"seed=3"`` -> 3; ``None`` or ``""`` -> 0."""
    if not text:
        return 0
    key, _, value = text.partition("=")
    if key != "seed" or not value.lstrip("-").isdigit():
        raise ValueError(f"{what}: expected 'seed=<int>', got {text!r}")
    return int(value)


def is_local(name_or_path: str) -> bool:
    return os.path.isdir(name_or_path)


def hub_hint(name: str, local: str = "a local save_pretrained folder") -> str:
    return (
        f"cannot load {name!r}: no access to the Hugging Face hub and not in its cache? "
        f"Use {local}, or the 'full-random' / 'tiny' presets (random weights)."
    )
