"""Prior files: the generator alone (what the attacks' ``prior`` takes) in safetensors, its config and
metadata as JSON in the header, never pickle. :func:`load_prior` also reads a training checkpoint
(:mod:`.train`), which holds the generator beside the critic and the optimiser state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..schema import Problems, finite_problems, read_safetensors, shape_problems, state_shapes
from .models import Generator, GeneratorConfig

__all__ = ["CHECKPOINT_FORMAT", "PRIOR_FORMAT", "atomic_save", "load_prior", "save_prior"]

PRIOR_FORMAT = "gradleak-prior-1"
CHECKPOINT_FORMAT = "gradleak-prior-checkpoint-1"
# bounds on a generator recorded in a file, checked before anything is built
GENERATOR_BOUNDS = {
    "size": (8, 64),
    "channels": (1, 3),
    "z_dim": (1, 1024),
    "width": (1, 1024),
    "max_width": (1, 1024),
    "num_classes": (0, 100_000),
}


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


def _generator_config(p: Problems, info: dict[str, Any]) -> GeneratorConfig | None:
    d = p.obj(info, "generator")
    if d is None:
        return None
    p.only(d, set(GENERATOR_BOUNDS), "generator.")
    values = {k: p.integer(d, k, lo, hi, "generator.") for k, (lo, hi) in GENERATOR_BOUNDS.items()}
    if any(v is None for v in values.values()):
        return None
    try:
        return GeneratorConfig(**values)  # type: ignore[arg-type]
    except InputError as e:
        p.append(f"generator: {e}")
        return None


def load_prior(path: str | Path) -> Generator:
    """A generator from a prior file (or a training checkpoint), in eval mode with frozen weights.

    The header and the tensor shapes are checked before the generator is built; any problem (or a
    corrupt file) raises one InputError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"prior {str(path)!r} does not exist: train one with `gradleak train-prior`")
    f = read_safetensors(path, "gradleak", "prior")
    info = f.header
    if info.get("format") not in (PRIOR_FORMAT, CHECKPOINT_FORMAT):
        raise InputError(f"{path} is not a gradleak prior (format {str(info.get('format'))[:60]!r})")
    p = Problems()
    gcfg = _generator_config(p, info)
    p.raise_if_any(f"prior {path} has a bad header")
    prefix = "G." if info["format"] == CHECKPOINT_FORMAT else ""
    with torch.device("meta"):
        want = state_shapes(Generator(gcfg))
    have = {k[len(prefix) :]: v for k, v in f.shapes.items() if k.startswith(prefix)}
    p += shape_problems(have, want)
    p.raise_if_any(f"prior {path}: weights do not fit its recorded architecture")
    tensors = {k[len(prefix) :]: v for k, v in f.tensors().items() if k.startswith(prefix)}
    p += finite_problems(tensors)
    p.raise_if_any(f"prior {path} holds unusable weights")
    G = Generator(gcfg)
    G.load_state_dict(tensors)
    G.eval()
    G.requires_grad_(False)
    G.meta = info
    return G
