#!/usr/bin/env python
"""The breaching side of ``run.py``: breaching 0.1.2's imprint attack ("Robbing the Fed", server
``malicious-model-rtf``, attack ``imprint``) on the images gradleak's side used.

Runs with **breaching's own venv** (never gradleak's; ``run.py`` calls it through ``subprocess``). It imports the
installed ``breaching`` package and contains none of its source. Input: ``--cases FILE.json``, a list of cases, each
``{"id", "images": .npy [n, C, H, W] in [0, 1] in client order, "labels": .npy [n], "clients", "batch" (per
client), "bins", "model", "mean", "std", "classes", "seed"}``. For each case it builds breaching's case
``1_single_image_small`` with ``server=malicious-model-rtf`` (its defaults: ``ImprintBlock``, fourier mode 32,
gain 1; ``num_bins`` set to the case's bins), ``user=multiuser_aggregate`` with ``user_range=[0, clients]`` (or
``local_gradient`` for one client), the data shape, class count and normalisation of the case, and every user's
dataloader swapped for its slice of the given images (nothing is downloaded). The attack runs with its defaults
(``breach_padding``, ``breach_reduction=weight``). Output: ``--out DIR`` gets ``<id>.npy`` (the reconstructions
in [0, 1]) and ``results.json`` (per case: hits before the reduction, reconstructions returned, seconds).

torchvision's PyPI wheels are CUDA builds whose compiled ops do not load on a CPU-only torch; the two op schemas
torchvision registers fake kernels for (``nms``, ``qnms``) are declared before the import so it succeeds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time

sys.dont_write_bytecode = True


def declare_torchvision_ops() -> str:
    """Let ``import torchvision`` succeed where its compiled ops cannot load (a CUDA wheel on CPU torch)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "torchvision not installed"
    lib_path = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(lib_path)
        return "native ops loaded"
    except (OSError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        declare_torchvision_ops.keep = lib  # type: ignore[attr-defined]
        return "op schemas declared"


def loaders(images, labels, case: dict) -> list:
    """One dataloader per user over its slice of the (normalised) images, in breaching's batch format."""
    import torch

    mean = torch.tensor(case["mean"])[None, :, None, None]
    std = torch.tensor(case["std"])[None, :, None, None]
    x = (images - mean) / std
    b = case["batch"]

    def collate(batch):
        xs, ys = zip(*batch)
        return dict(inputs=torch.stack(xs), labels=torch.stack(ys))

    out = []
    for c in range(case["clients"]):
        part = slice(c * b, (c + 1) * b)
        data = torch.utils.data.TensorDataset(x[part], labels[part])
        out.append(torch.utils.data.DataLoader(data, batch_size=b, shuffle=False, collate_fn=collate))
    return out


def run_case(breaching, case: dict, out_dir: str) -> dict:
    import numpy as np
    import torch

    images = torch.from_numpy(np.load(case["images"])).float()
    labels = torch.from_numpy(np.load(case["labels"])).long()
    clients = case["clients"]
    user = (
        ["user=multiuser_aggregate", f"user.user_range=[0,{clients}]"]
        if clients > 1
        else ["user=local_gradient", "user.user_idx=0"]
    )
    overrides = [
        "server=malicious-model-rtf",
        "server.pretrained=False",
        f"server.model_modification.num_bins={case['bins']}",
        *user,
        f"user.num_data_points={case['batch']}",
        "user.provide_labels=False",
        f"model={case['model']}",
        f"data.shape=[{','.join(str(s) for s in images.shape[1:])}]",
        f"data.classes={case['classes']}",
        f"data.mean=[{','.join(repr(float(m)) for m in case['mean'])}]",
        f"data.std=[{','.join(repr(float(s)) for s in case['std'])}]",
    ]
    cfg_case = breaching.get_case_config(case="1_single_image_small", overrides=overrides)
    per_user = loaders(images, labels, case)
    users_module = sys.modules["breaching.cases.users"]
    original = users_module.construct_dataloader
    users_module.construct_dataloader = lambda cfg_data, cfg_impl, user_idx=0, **kw: per_user[user_idx]
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    torch.manual_seed(case["seed"])
    try:
        user_obj, server, _, _ = breaching.cases.construct_case(cfg_case, setup)
    finally:
        users_module.construct_dataloader = original
    attacker = breaching.attacks.prepare_attack(
        server.model, server.loss, breaching.get_attack_config("imprint"), setup
    )
    shared, payloads, _ = server.run_protocol(user_obj)
    hits: list[int] = []
    reduce = attacker.reduce_hits

    def counting(layer_inputs, *a, **kw):  # records the hits before breaching cuts or pads them
        hits.append(int(layer_inputs.shape[0]))
        return reduce(layer_inputs, *a, **kw)

    attacker.reduce_hits = counting
    t0 = time.perf_counter()
    rec, _ = attacker.reconstruct(payloads, shared, server.secrets, dryrun=False)
    seconds = time.perf_counter() - t0
    mean = torch.tensor(case["mean"])[None, :, None, None]
    std = torch.tensor(case["std"])[None, :, None, None]
    out = (rec["data"].detach().cpu() * std + mean).clamp(0, 1)
    path = os.path.join(out_dir, f"{case['id']}.npy")
    np.save(path, out.numpy().astype(np.float32))
    return {"id": case["id"], "hits": hits[0], "returned": int(out.shape[0]), "seconds": seconds, "file": path}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shim = declare_torchvision_ops()
    import torch

    torch.set_num_threads(a.threads)
    from importlib.metadata import version

    import breaching

    with open(a.cases) as f:
        cases = json.load(f)
    results = {
        "environment": {"breaching": version("breaching"), "torch": torch.__version__, "torchvision_ops": shim},
        "cases": [run_case(breaching, case, a.out) for case in cases],
    }
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
