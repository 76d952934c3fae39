"""Recovery from a fished update — Wen, Geiping, Fowl, Goldblum & Goldstein, "Fishing for User Data in
Large-Batch Federated Learning via Gradient Magnification", ICML 2022, arXiv:2202.00580. See PAPERS.md §9 and
:mod:`gradleak.servers.fishing`.

A fishing server made one sample carry the (aggregated) update. The head's bias gradient says how many did:
``−batch_size · ∂L/∂b_t`` must be 1 (else the attack refuses). The update times ``batch_size`` is then that
sample's own gradient in the body and in head row ``t``; the other head rows, which every sample of the batch
touched, are rebuilt from row ``t`` (the fished sample has ``p_j = 1/(N − 1)`` for every ``j ≠ t``, so its row
``j`` is ``−row_t / (N − 1)``). For feature fishing the gradient is moved to the same head with weight 1 on the
feature and a bias far below the others, on which every candidate passes its gradient (the body's gradient
divided by ``feature_weight``, as in the reference framework) — on the fished head a candidate above the cut
would have no gradient to match. Inverting Gradients (:mod:`gradleak.attacks.inverting_gradients`) then
reconstructs the one sample with the label ``t`` the server fished for: the fished gradient is that of a class-``t``
sample even where a difference of two cuts isolated a sample of another class (:mod:`gradleak.servers.fishing`).
Given labels are not used.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..labels import LabelResult
from ..observation import Observation
from ..protocols import FedSGD
from ..servers.fishing import fished_count
from .base import Attack, AttackResult, attack
from .common import gradient_problems
from .inverting_gradients import InvertingGradients
from .steps import StepCallback, no_progress


@dataclass(frozen=True, kw_only=True)
class FishingRecoveryConfig:
    """Inverting Gradients' settings for the one fished sample (its defaults, cut to 600 iterations as in the
    ``inverting_gradients`` attack); ``count_tol``: how far the fished count may be from 1."""

    iterations: int = 600
    restarts: int = 1
    lr: float = 0.1
    tv: float = 0.2
    count_tol: float = 0.05


def fished_gradient(obs: Observation) -> tuple[nn.Module, dict[str, Tensor]]:
    """The model and the one fished sample's gradient on it (module docstring), from an update whose fished count
    is 1."""
    record = obs.server or {}
    head, t, n = str(record["head"]), int(record["target"]), obs.num_classes
    grad = {k: v * obs.known_batch_size() for k, v in obs.update.items()}
    w, b = grad[f"{head}.weight"].clone(), grad[f"{head}.bias"].clone()
    others = torch.arange(n, device=w.device) != t
    w[others] = -w[t] / (n - 1)
    b[others] = -b[t] / (n - 1)
    grad[f"{head}.weight"], grad[f"{head}.bias"] = w, b
    model = obs.model
    if record["mode"] == "feature":
        m = float(record["feature_weight"])
        grad = {k: v if k.startswith(f"{head}.") else v / m for k, v in grad.items()}
        model = copy.deepcopy(obs.model)
        layer = model.get_submodule(head)
        assert isinstance(layer, nn.Linear) and layer.bias is not None  # the fishing server required both
        with torch.no_grad():
            layer.weight[t] = 0.0
            layer.weight[t, int(record["feature"])] = 1.0
            layer.bias[t] = -float(record["other_bias"])
    return model, grad


@attack("fishing")
class FishingRecovery(Attack):
    """The one sample a fishing server isolated, reconstructed by Inverting Gradients at batch size 1.

    Paper: Wen et al. ICML 2022. Needs: the record of a ``fishing`` server (``--server fishing``), a FedSGD
    gradient, the batch size, and a fished count of 1. Settings: :class:`FishingRecoveryConfig`."""

    paper = "Wen et al. ICML 2022, arXiv:2202.00580"
    Config = FishingRecoveryConfig

    def problems(self, obs: Observation) -> list[str]:
        record = obs.server or {}
        if record.get("name") != "fishing":
            return ["needs the update of a model with a fished head: the record of a fishing server (--server fishing)"]
        problems = gradient_problems(obs)
        if obs.batch_size is None:
            problems.append("the batch size is unknown to the server")
        elif obs.client_batch_sizes is not None and len(set(obs.client_batch_sizes)) > 1:
            problems.append("the clients' batch sizes differ: the fished sample's weight in the mean is unknown")
        else:
            count = fished_count(obs)
            if abs(count - 1) > self.config.count_tol:
                problems.append(
                    f"the update carries {count:.2f} fished samples, not one: "
                    "fish another class, cut the feature elsewhere, or let the server search over rounds "
                    "(--server fishing:search_rounds=40,feature_weight=10000)"
                )
        return problems

    def run(
        self,
        obs: Observation,
        labels: LabelResult | None = None,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> AttackResult:
        t0 = time.perf_counter()
        self.check(obs)
        c = self.config
        record = obs.server or {}
        model, grad = fished_gradient(obs)
        one = Observation(
            model=model,
            update=grad,
            protocol=FedSGD(),
            num_classes=obs.num_classes,
            input_shape=obs.input_shape,
            batch_size=1,
            normalization=obs.normalization,
            head=obs.head,
        )
        target = int(record["target"])
        ig = InvertingGradients(iterations=c.iterations, restarts=c.restarts, lr=c.lr, tv=c.tv)
        res = ig.run(one, LabelResult("fishing", [target]), generator=generator, on_step=on_step)
        res.name = self.name
        res.seconds = time.perf_counter() - t0
        res.config = self.config_json()
        res.assumptions = {
            **res.assumptions,
            "fished_count": fished_count(obs),
            "target_class": target,
            "mode": record["mode"],
            "batch_size": 1,
            "aggregate_batch_size": obs.batch_size,
        }
        return res
