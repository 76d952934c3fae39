"""Training a generative prior on public data, with resumable safetensors checkpoints.

A non-saturating GAN (Goodfellow et al. 2014) with a spectrally normalised critic, Adam(2e-4,
β = (0.5, 0.999)), sized to train at 16–32 px on a laptop CPU in minutes. Everything random — the
weights' initialisation, the batches and the latents — comes from the seed, and a checkpoint holds
the random state, so a resumed run continues exactly where it stopped.

The training checkpoint (safetensors, :mod:`.io`) holds the generator, the critic, both optimisers and
the random state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Dataset, resize_images
from ..errors import InputError
from ..schema import Problems, finite_problems, is_number, read_safetensors, shape_problems, state_shapes
from .io import CHECKPOINT_FORMAT, atomic_save
from .models import Discriminator, Generator, GeneratorConfig

__all__ = ["TrainConfig", "TrainStep", "train_prior"]

MAX_STEPS = 1 << 31  # a checkpoint's recorded step is checked against this before anything is restored


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of one prior-training run."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    conditional: bool = True
    checkpoint_every: int = 500
    sample_every: int = 500

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.lr <= 0:
            raise InputError(f"bad training settings: steps {self.steps}, batch {self.batch_size}, lr {self.lr}")


@dataclass(frozen=True)
class TrainStep:
    """Progress of prior training, handed to ``on_step``."""

    step: int
    total: int
    loss_g: float
    loss_d: float


def _prepare(data: Dataset, size: int) -> Tensor:
    x = (
        data.images
        if data.images.shape[-1] == size and data.images.shape[-2] == size
        else resize_images(data.images, size)
    )
    return x.clamp(0, 1) * 2 - 1


def train_prior(
    data: Dataset,
    gcfg: GeneratorConfig,
    cfg: TrainConfig = TrainConfig(),
    *,
    checkpoint: str | Path | None = None,
    dataset_name: str | None = None,
    on_step: Callable[[TrainStep], None] = lambda s: None,
    on_sample: Callable[[int, Tensor], None] = lambda step, images: None,
) -> Generator:
    """Train a generator on ``data`` (resized to ``gcfg.size``); resume from ``checkpoint`` if it exists.

    ``on_sample(step, images)`` receives a fixed set of 16 samples in [0, 1] every ``sample_every``
    steps and at the end. Returns the generator in eval mode.
    """
    if gcfg.channels != data.image_shape[0]:
        raise InputError(
            f"the prior has {gcfg.channels} channel(s) but {data.name!r} images have {data.image_shape[0]}"
        )
    if gcfg.num_classes and gcfg.num_classes != data.num_classes:
        raise InputError(f"a conditional prior needs num_classes={data.num_classes} for {data.name!r}")
    images, labels = _prepare(data, gcfg.size), data.labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G, D = Generator(gcfg), Discriminator(gcfg)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed)
    fixed = torch.Generator().manual_seed(cfg.seed + 1)
    z_fixed, y_fixed = G.sample_latent(16, generator=fixed), G.sample_labels(16, generator=fixed)
    meta = {
        "generator": gcfg.to_json(),
        "training": {**asdict(cfg), "dataset": dataset_name or data.name, "images": len(data)},
    }
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        start = _restore(ckpt, meta, G, D, opt_g, opt_d, gen)
    G.train()
    D.train()
    for step in range(start, cfg.steps):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        real, y = images[idx], (labels[idx] if gcfg.num_classes else None)
        z = G.sample_latent(cfg.batch_size, generator=gen)
        fake = G(z, y)
        loss_d = F.softplus(-D(real, y)).mean() + F.softplus(D(fake.detach(), y)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-D(fake, y)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        done = step + 1
        on_step(TrainStep(done, cfg.steps, float(loss_g.detach()), float(loss_d.detach())))
        if done % cfg.sample_every == 0 or done == cfg.steps:
            G.eval()
            with torch.no_grad():
                on_sample(done, (G(z_fixed, y_fixed) + 1) / 2)
            G.train()
        if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _save_checkpoint(ckpt, meta, done, G, D, opt_g, opt_d, gen)
    G.eval()
    G.requires_grad_(False)
    G.meta = {**meta, "step": cfg.steps}
    return G


# -- checkpoints ---------------------------------------------------------------------------------------
def _opt_tensors(
    prefix: str, opt: torch.optim.Optimizer, params: list[nn.Parameter]
) -> tuple[dict[str, Tensor], list[float]]:
    out, steps = {}, []
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        steps.append(float(st.get("step", 0)))
        for name in ("exp_avg", "exp_avg_sq"):
            if name in st:
                out[f"{prefix}.{i}.{name}"] = st[name]
    return out, steps


def _save_checkpoint(
    path: Path,
    meta: dict[str, Any],
    step: int,
    G: Generator,
    D: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    gen: torch.Generator,
) -> None:
    tensors = {f"G.{k}": v for k, v in G.state_dict().items()} | {f"D.{k}": v for k, v in D.state_dict().items()}
    tg, steps_g = _opt_tensors("opt_g", opt_g, list(G.parameters()))
    td, steps_d = _opt_tensors("opt_d", opt_d, list(D.parameters()))
    tensors |= tg | td | {"rng": gen.get_state()}
    info = {"format": CHECKPOINT_FORMAT, **meta, "step": step, "opt_steps": [steps_g, steps_d]}
    atomic_save(tensors, path, {"gradleak": json.dumps(info)})


def _restore(
    path: Path,
    meta: dict[str, Any],
    G: Generator,
    D: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    gen: torch.Generator,
) -> int:
    """Resume from a training checkpoint of the same run; anything else raises one InputError."""
    f = read_safetensors(path, "gradleak", "prior checkpoint")
    info = f.header
    free = ("steps", "checkpoint_every", "sample_every")  # may change between a run and its resumption
    mine = {k: v for k, v in meta["training"].items() if k not in free}
    training = info.get("training")
    theirs = {k: v for k, v in training.items() if k not in free} if isinstance(training, dict) else None
    if (
        info.get("format") != CHECKPOINT_FORMAT
        or info.get("generator") != meta["generator"]
        or json.dumps(mine, sort_keys=True) != json.dumps(theirs, sort_keys=True)
    ):
        raise InputError(f"checkpoint {path} belongs to a run with other settings; remove it or use another folder")
    p = Problems()
    step = p.integer(info, "step", 0, MAX_STEPS)
    groups = (("opt_g", opt_g, list(G.parameters())), ("opt_d", opt_d, list(D.parameters())))
    opt_steps = p.get(info, "opt_steps", "")
    if not (
        isinstance(opt_steps, list)
        and [len(s) if isinstance(s, list) else -1 for s in opt_steps] == [len(params) for _, _, params in groups]
        and all(is_number(x) and x >= 0 for s in opt_steps for x in s)
    ):
        p.append("opt_steps: expected one non-negative number per parameter of G and of D")
    want = {f"G.{k}": v for k, v in state_shapes(G).items()} | {f"D.{k}": v for k, v in state_shapes(D).items()}
    want["rng"] = tuple(gen.get_state().shape)
    for prefix, _, params in groups:
        for i, q in enumerate(params):
            if f"{prefix}.{i}.exp_avg" in f.shapes or f"{prefix}.{i}.exp_avg_sq" in f.shapes:
                want[f"{prefix}.{i}.exp_avg"] = want[f"{prefix}.{i}.exp_avg_sq"] = tuple(q.shape)
    p += shape_problems(f.shapes, want)
    if f.dtypes.get("rng", "U8") != "U8":
        p.append(f"rng: dtype {f.dtypes['rng']}, expected U8")
    p.raise_if_any(f"checkpoint {path} cannot resume this run")
    tensors = f.tensors()
    p += finite_problems(tensors)
    p.raise_if_any(f"checkpoint {path} cannot resume this run")
    G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")})
    D.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D.")})
    for (prefix, opt, params), steps in zip(groups, opt_steps):
        for i, q in enumerate(params):
            if f"{prefix}.{i}.exp_avg" in tensors:
                opt.state[q] = {
                    "step": torch.tensor(steps[i]),
                    "exp_avg": tensors[f"{prefix}.{i}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"{prefix}.{i}.exp_avg_sq"].clone(),
                }
    try:
        gen.set_state(tensors["rng"])
    except RuntimeError as e:
        raise InputError(f"checkpoint {path}: its random state is invalid ({e})") from None
    return step  # type: ignore[return-value]
