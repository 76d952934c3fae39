"""Prior files: the generator alone (what the attacks' ``prior`` takes) in safetensors, its config and
metadata as JSON in the header, never pickle. :func:`load_prior` also reads a training checkpoint
(:mod:`.train`), which holds the generator beside the critic and the optimiser state.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import InputError
from .models import Generator, GeneratorConfig

__all__ = ["CHECKPOINT_FORMAT", "PRIOR_FORMAT", "atomic_save", "load_prior", "save_prior"]

PRIOR_FORMAT = "gradleak-prior-1"
CHECKPOINT_FORMAT = "gradleak-prior-checkpoint-1"


def atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` with ``metadata`` to a safetensors file, replacing ``path`` only once complete."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def save_prior(G: Generator, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the generator alone (its config and ``meta`` in the header)."""
    path = Path(path)
    info = {"format": PRIOR_FORMAT, **(meta or getattr(G, "meta", {}) or {}), "generator": G.config.to_json()}
    atomic_save(dict(G.state_dict()), path, {"gradleak": json.dumps(info)})
    return path


def load_prior(path: str | Path) -> Generator:
    """A generator from a prior file (or a training checkpoint), in eval mode with frozen weights."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"prior {str(path)!r} does not exist: train one with `gradleak train-prior`")
    try:
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {}).get("gradleak", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not a gradleak prior (safetensors): {e}") from e
    if info.get("format") not in (PRIOR_FORMAT, CHECKPOINT_FORMAT):
        raise InputError(f"{path} is not a gradleak prior (format {info.get('format')!r})")
    if info["format"] == CHECKPOINT_FORMAT:
        tensors = {k[len("G."):]: v for k, v in tensors.items() if k.startswith("G.")}
    G = Generator(GeneratorConfig(**info["generator"]))
    try:
        G.load_state_dict(tensors)
    except RuntimeError as e:
        raise InputError(f"prior {path}: weights do not fit its recorded architecture: {e}") from e
    G.eval()
    G.requires_grad_(False)
    G.meta = info  # type: ignore[assignment]
    return G
