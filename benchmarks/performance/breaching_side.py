#!/usr/bin/env python
"""The breaching side of ``side_by_side.py``: one breaching==0.1.2 attack run, exported for gradleak.

Runs with **breaching's own venv** (``setup_breaching_env.sh`` in the harness folder, ``--harness``), never
with gradleak's. It imports that folder's harness (``run_breaching_baseline.py``: torchvision CPU shim,
scikit-image images, case ``1_single_image_small``) and the installed ``breaching`` package; it
contains none of breaching's source. It writes two files:

``--export CASE.safetensors``
    what gradleak needs to run the *same* case: the images in [0, 1] (the harness's exact pixels), the
    labels, the parameters and buffers the server sent (breaching's names, in ``parameters()`` /
    ``buffers()`` order, listed in the metadata), the gradient the user shared, the model's logits on
    the user's batch (to check the mapped weights give equal outputs), the normalisation, and the
    candidates snapshotted every ``--snapshot-every`` optimizer steps plus the final reconstruction
    (model space), so both sides are scored by the same metric code.
``--json RECORD.json``
    timing (a global optimizer-step pre-hook stamps every ``optimizer.step()``: the gap between two stamps
    is one iteration of breaching's own loop), wall time, peak RSS, load, breaching's own PSNR.

The only change to breaching's case: for a ConvNet at an image size other than 32, its head
``Linear(36·width, classes)`` (fixed to 32×32 inputs) is replaced by a seeded ``Linear`` of the right
input size on the server's and the user's model, so the 64×64 case can run at all (recorded in the JSON).
Safetensors are written with a 30-line writer below (breaching's venv has no ``safetensors``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import time

sys.dont_write_bytecode = True


def write_safetensors(path: str, tensors: dict, metadata: dict) -> None:
    """Write ``tensors`` (name -> CPU torch tensor, float32 or int64) in the safetensors format."""
    import torch

    codes = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64"}
    header: dict = {"__metadata__": {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        raw = t.numpy().tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--harness", required=True, help="folder holding run_breaching_baseline.py")
    p.add_argument("--attack", default="invertinggradients", help="invertinggradients | deepleakage")
    p.add_argument("--model", default="ConvNet", help="ConvNet | ResNet18")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--image-index", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, default=3, help="labels are (label + i) %% 10, as in the harness")
    p.add_argument(
        "--provide-labels",
        choices=("yes", "no"),
        default="yes",
        help="give the user's labels to the attack (IG); 'no' for DLG's joint label optimisation",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--snapshot-every", type=int, default=10)
    p.add_argument("--export", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args()

    # The harness is a folder of scripts the user names (--harness), run in breaching's own venv where
    # gradleak is not installed: putting that folder on the path is the only way to import it.
    sys.path.insert(0, os.path.abspath(args.harness))
    from run_breaching_baseline import build_case, natural_images, psnr_of, torchvision_cpu_shim

    shim = torchvision_cpu_shim()
    import torch
    import torchvision  # noqa: F401  (works after the shim)

    if args.threads:
        torch.set_num_threads(args.threads)
    from importlib.metadata import version

    import breaching
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    rss_after_imports = peak_rss_mb()
    torch.manual_seed(args.seed)
    images = natural_images(args.batch, size=args.size, first=args.image_index, seed=args.seed)
    labels = [(args.label + i) % 10 for i in range(args.batch)]
    overrides = [f"user.provide_labels={args.provide_labels == 'yes'}", f"data.shape=[3,{args.size},{args.size}]"]
    cfg_case, setup, user, server, model, _ = build_case(breaching, args.model, args.batch, images, labels, overrides)
    adapted = None
    if args.model.lower() == "convnet" and args.size != 32:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed + 12345)
            inner = server.model.model.model
            body = torch.nn.Sequential(*list(inner.children())[:-1]).eval()
            with torch.no_grad():
                n_in = body(torch.zeros(1, 3, args.size, args.size)).shape[1]
            inner.linear = torch.nn.Linear(n_in, cfg_case.data.classes)
            user.model.model.model.linear = torch.nn.Linear(n_in, cfg_case.data.classes)
        adapted = (
            f"ConvNet head replaced by a seeded Linear({n_in}, {cfg_case.data.classes}) "
            f"for {args.size}x{args.size} inputs"
        )
    cfg_attack = breaching.get_attack_config(
        args.attack, overrides=[f"optim.max_iterations={args.iters}", f"optim.callback={max(1, args.iters // 5)}"]
    )
    attacker = breaching.attacks.prepare_attack(server.model, server.loss, cfg_attack, setup)
    shared, payloads, true = server.run_protocol(user)

    # what the server sent and what the user shared, for gradleak's side
    names_p = [n for n, _ in server.model.named_parameters()]
    names_b = [n for n, _ in server.model.named_buffers()]
    sent_p, sent_b = payloads[0]["parameters"], payloads[0]["buffers"]
    grads = shared[0]["gradients"]
    user_mode_train = user.model.training
    with torch.no_grad():
        ref = user.model
        logits = ref(true["data"])
    tensors = {
        "images01": images,
        "labels": torch.as_tensor(labels, dtype=torch.long),
        "user_inputs": true["data"],
        "logits": logits,
    }
    for i, t in enumerate(sent_p):
        tensors[f"param.{i}"] = t.detach().float()
    for i, t in enumerate(sent_b or []):
        tensors[f"buffer.{i}"] = t.detach().long() if t.dtype == torch.long else t.detach().float()
    for i, g in enumerate(grads):
        tensors[f"grad.{i}"] = g.detach().float()

    # timing: stamp every optimizer.step(); snapshot the candidate every --snapshot-every steps
    stamps: list[float] = []
    snaps: list[tuple[int, float, torch.Tensor]] = []
    closure_calls = [0]

    def pre_hook(optimizer, a, kw):
        now = time.perf_counter()
        n = len(stamps)  # iterations completed before this step
        stamps.append(now)
        if n % args.snapshot_every == 0:
            snaps.append((n, now, optimizer.param_groups[0]["params"][0].detach().clone()))

    handle = register_optimizer_step_pre_hook(pre_hook)
    make_closure = attacker._compute_objective

    def counting_compute_objective(*a, **kw):
        closure = make_closure(*a, **kw)

        def counted():
            closure_calls[0] += 1
            return closure()

        return counted

    attacker._compute_objective = counting_compute_objective
    load_before = os.getloadavg()
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    rec, stats = attacker.reconstruct(payloads, shared, server.secrets, dryrun=False)
    t1 = time.perf_counter()
    handle.remove()
    load_after = os.getloadavg()
    n_done = len(stats.get("Trial_0_Val", [])) or len(stamps)
    psnr, _, _ = psnr_of(breaching, rec["data"], true["data"], cfg_case.data.mean, cfg_case.data.std)

    tensors["final"] = rec["data"].detach().float()
    if snaps:
        tensors["snapshots"] = torch.stack([s[2] for s in snaps])
    meta = dict(
        param_names=names_p,
        buffer_names=names_b,
        mean=list(cfg_case.data.mean),
        std=list(cfg_case.data.std),
        user_mode="train" if user_mode_train else "eval",
        size=args.size,
        model=args.model,
    )
    write_safetensors(args.export, tensors, meta)

    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    record = dict(
        side="breaching",
        attack=args.attack,
        model=args.model,
        batch=args.batch,
        size=args.size,
        image_index=args.image_index,
        seed=args.seed,
        labels=labels,
        labels_given=args.provide_labels == "yes",
        iterations=n_done,
        stamps_rel=[s - t0 for s in stamps],
        closure_calls=closure_calls[0],
        gaps=gaps,
        wall_s=t1 - t0,
        snapshot_iterations=[s[0] for s in snaps],
        snapshot_times_rel=[s[1] - t0 for s in snaps],
        psnr_breaching_metric=float(psnr),
        rec_labels=None if rec.get("labels") is None else rec["labels"].view(-1).tolist(),
        peak_rss_mb=peak_rss_mb(),
        peak_rss_before_run_mb=rss_before,
        peak_rss_after_imports_mb=rss_after_imports,
        rss_end_mb=rss_now_mb(),
        load_before=list(load_before),
        load_after=list(load_after),
        torch_threads=torch.get_num_threads(),
        user_bn_mode="train" if user_mode_train else "eval",
        adapted=adapted,
        params=sum(p.numel() for p in model.parameters()),
        versions=dict(torch=torch.__version__, breaching=version("breaching"), torchvision_shim=shim.split(" (")[0]),
    )
    with open(args.json, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
