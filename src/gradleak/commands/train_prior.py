"""``gradleak train-prior``: train a generative prior on public data for the GGL and GIFD attacks.

Writes ``OUT/prior.safetensors`` (the generator, what ``--prior`` takes), ``OUT/checkpoint.safetensors``
(resumable: rerunning the same command continues from it) and sample grids ``OUT/samples/step_N.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_args import nonnegative_int, output_dir, positive_float, positive_int, seed
from ..observation_schema import MAX_BATCH


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-prior",
        help="train a generator on public data (for --attack ggl/gifd)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--data", default="digits", help="bundled dataset name or a path (default digits)")
    p.add_argument(
        "--image-size",
        type=int,
        choices=(8, 16, 32, 64),
        default=32,
        help="generated image size: 8, 16, 32 or 64 (default 32)",
    )
    p.add_argument(
        "--holdout",
        type=nonnegative_int(),
        default=0,
        metavar="N",
        help="leave the last N images out of training (victims for an in-distribution audit)",
    )
    p.add_argument("--unconditional", action="store_true", help="ignore the labels (default: class-conditional)")
    p.add_argument("--z-dim", type=positive_int(4096), default=64)
    p.add_argument(
        "--width",
        type=positive_int(4096),
        default=32,
        help="channels of the full-size feature map (doubles per 2x down)",
    )
    p.add_argument("--steps", type=positive_int(), default=3000)
    p.add_argument("--batch-size", type=positive_int(MAX_BATCH), default=64)
    p.add_argument("--lr", type=positive_float(), default=2e-4)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--sample-every", type=positive_int(), default=500)
    p.add_argument("--checkpoint-every", type=positive_int(), default=500)
    p.add_argument("--fresh", action="store_true", help="discard OUT/checkpoint.safetensors instead of resuming")
    p.add_argument("--out", type=output_dir, default="out/prior", help="output folder (default out/prior)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset
    from ..errors import InputError
    from ..prior import GeneratorConfig, save_prior
    from ..prior.train import TrainConfig, train_prior
    from ..report import save_grid

    data = load_dataset(a.data, size=a.image_size)
    if not 0 <= a.holdout < len(data):
        raise InputError(f"--holdout must be in [0, {len(data)}), got {a.holdout}")
    if a.holdout:
        data = data.subset(list(range(len(data) - a.holdout)))
    gcfg = GeneratorConfig(
        size=a.image_size,
        channels=data.image_shape[0],
        z_dim=a.z_dim,
        width=a.width,
        num_classes=0 if a.unconditional else data.num_classes,
    )
    cfg = TrainConfig(
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        conditional=not a.unconditional,
        checkpoint_every=a.checkpoint_every,
        sample_every=a.sample_every,
    )
    out = Path(a.out)
    ckpt = out / "checkpoint.safetensors"
    if a.fresh and ckpt.exists():
        ckpt.unlink()
    elif ckpt.exists():
        print(f"resuming from {ckpt}")
    bar = None
    if not a.quiet:
        from tqdm import tqdm

        bar = tqdm(desc="train-prior", total=cfg.steps, unit="step", dynamic_ncols=True)

    def on_step(s) -> None:
        if bar is not None:
            bar.n = s.step
            bar.set_postfix_str(f"G {s.loss_g:.3f} D {s.loss_d:.3f}", refresh=False)
            bar.refresh()

    def on_sample(step: int, images: torch.Tensor) -> None:
        save_grid(out / "samples" / f"step_{step:06d}.png", images[:8], [images[8:]])

    G = train_prior(
        data,
        gcfg,
        cfg,
        checkpoint=ckpt,
        dataset_name=f"{a.data} (first {len(data)} images)",
        on_step=on_step,
        on_sample=on_sample,
    )
    if bar is not None:
        bar.close()
    path = save_prior(G, out / "prior.safetensors", {**G.meta, "holdout": a.holdout})
    print(json.dumps({"prior": str(path), "generator": gcfg.to_json(), "steps": cfg.steps}))
    return 0
