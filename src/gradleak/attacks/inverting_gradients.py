"""Inverting Gradients — Geiping, Bauermeister, Dröge & Moeller, "Inverting Gradients — How easy is it
to break privacy in federated learning?", NeurIPS 2020, arXiv:2003.14053.

Minimise ``1 − cos(∇θL(x̂, ŷ), g*)`` over all layers concatenated plus ``α_TV · TV(x̂)``, with Adam
(lr 0.1) on the *sign* of the gradient, step decay (×0.1 at 3/8, 5/8 and 7/8 of the run), the
candidate kept inside the image box, and several restarts of which the one with the lowest matching
loss is kept. Labels come from a label-recovery method (iDLG for one image), as in the paper. For
FedAvg the local steps are replayed differentiably (the paper's §5), which assumes the server knows the
client's mini-batch order; ``replay="full-batch"`` is the order-agnostic approximation
(:func:`gradleak.protocols.replay_protocol`), and ``assumptions["batch_order"]`` says which was used. Example::

    result = InvertingGradients(iterations=2000).run(obs, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..labels import LabelResult
from ..observation import Observation
from .base import Attack, AttackResult, attack
from .common import batch_size_of, label_targets, protocol_assumptions, to_result
from .matching import MatchingConfig, MatchingProblem, run_matching
from .steps import StepCallback, no_progress


@dataclass(frozen=True, kw_only=True)
class InvertingGradientsConfig:
    """Defaults of Geiping et al. 2020 (cosine, signed Adam 0.1, step decay, box, TV 0.2 as in the
    reference framework's config); the iteration budget is cut from 24 000 to 600 to fit a CPU audit
    (≈2 min for the width-64 ConvNet at 32×32 on 2 cores; see benchmarks/core).

    The TV weight decides a signed step wherever ``tv·|∂TV/∂x|`` exceeds the matching term's ``|∂(1 − cos)/∂x|``. On
    the untrained 32×32 ConvNet of the default audit the latter is about 1e-6 per pixel against TV's 7e-4, so at 0.2
    the update steers only the pixels where TV's gradient cancels. Measured (issue 19): on one image ``lr=1, tv=0``
    ends higher (ConvNet, bundled photos: mean 22.19 against 18.90 dB at TV 0.2), on batches lower (ResNet-18, B=8,
    100 iterations: 8.09 against 12.03 dB for the defaults); ``benchmarks/core/results_tv0_*.md``,
    ``benchmarks/performance/results_tv0.md``. The paper tunes the TV weight per setting. ``tv_scale="relative"``
    (gradleak's addition) makes ``tv`` a share of the matching gradient's norm instead;
    :class:`InvertingGradientsRelativeTV` (``ig_relative_tv``) runs it, and :class:`InvertingGradientsRelativeTVPlateau`
    (``ig_relative_tv_plateau``) with the "plateau" schedule; ``batch_tv`` (gradleak's addition) sets another weight
    for batches of more than one image, which :class:`InvertingGradientsBatchTV` (``ig_batch_tv``, the default audit's
    attack) uses."""

    iterations: int = 600
    restarts: int = 1
    prune_at: tuple[float, ...] = ()  # early elimination of restarts (gradleak's addition; see MatchingConfig)
    lr: float = 0.1
    tv: float = 0.2
    tv_scale: str = "absolute"  # "relative": ``tv`` is a share of the matching gradient's norm (not in the paper)
    batch_tv: float | None = None  # the TV weight for a batch of more than one image; None: ``tv`` (not in the paper)
    signed: bool = True
    schedule: str = "step"  # the paper's; "plateau": the first decay where the loss went flat (not in the paper)
    patience: int = 20  # "plateau": iterations without a 1% fall of the loss before the first decay
    replay: str = "known-order"  # FedAvg: "known-order" (the client's mini-batch order) | "full-batch"
    log_every: int = 10
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.prune_at:  # bad early-elimination settings fail here, before any work
            MatchingConfig(iterations=self.iterations, restarts=self.restarts, prune_at=tuple(self.prune_at))


@attack("inverting_gradients")
class InvertingGradients(Attack):
    """Inverting Gradients: cosine distance between the candidate's and the observed update plus total
    variation, signed Adam in a box, step-decayed learning rate; restarts chosen by matching loss.

    Paper: Geiping et al. NeurIPS 2020. Needs: labels (``labels=None``: ``auto``); FedSGD gradients or FedAvg
    deltas (the local steps are replayed in the client's mini-batch order, or ``replay="full-batch"`` when the
    order is unknown). Main settings (:class:`InvertingGradientsConfig`): ``iterations``
    (600), ``restarts`` (1), ``lr`` (0.1), ``tv`` (0.2), ``checkpoint``; ``prune_at`` (not in the paper): early
    elimination of restarts — at each of these fractions of the run the worse half, by matching distance, stops;
    ``batch_tv`` (not in the paper): the TV weight for batches of more than one image; ``patience`` (20): with
    ``schedule="plateau"`` (not in the paper), the iterations without a 1% fall of the loss before the first decay."""

    paper = "Geiping et al. NeurIPS 2020, arXiv:2003.14053"
    Config = InvertingGradientsConfig

    def run(
        self,
        obs: Observation,
        labels: LabelResult | None = None,
        *,
        generator: torch.Generator,
        on_step: StepCallback = no_progress,
    ) -> AttackResult:
        t0 = time.perf_counter()
        c = self.config
        targets, labels = label_targets(obs, labels, self.name)
        batch = batch_size_of(obs, labels, self.name)
        cfg = MatchingConfig(
            iterations=c.iterations,
            restarts=c.restarts,
            prune_at=tuple(c.prune_at),
            distance="cosine",
            lr=c.lr,
            signed=c.signed,
            schedule=c.schedule,
            patience=c.patience,
            tv=c.tv if batch == 1 or c.batch_tv is None else c.batch_tv,
            tv_scale=c.tv_scale,
            replay=c.replay,
            log_every=c.log_every,
        )
        problem = MatchingProblem(obs, targets, cfg)
        match = run_matching(problem, batch_size=batch, generator=generator, on_step=on_step, checkpoint=c.checkpoint)
        return to_result(
            self.name,
            obs,
            match,
            t0,
            labels=labels.labels,
            restarts=c.restarts,
            config=self.config_json(),
            assumptions=protocol_assumptions(obs, c.replay),
        )


@dataclass(frozen=True, kw_only=True)
class RelativeTVConfig(InvertingGradientsConfig):
    """Inverting Gradients' settings but Adam step 1.0 and a TV gradient of 0.3 times the matching gradient's norm."""

    lr: float = 1.0
    tv: float = 0.3
    tv_scale: str = "relative"


@attack("ig_relative_tv")
class InvertingGradientsRelativeTV(InvertingGradients):
    """gradleak's variant of Inverting Gradients (not in the paper): the TV term's gradient is scaled, per candidate
    and step, to ``tv`` (0.3) times the norm of the matching gradient, and the Adam step is 1.0 instead of 0.1.

    Why (issue 19): with the paper's fixed weight, TV's gradient decides the signed step wherever it is nonzero,
    because the cosine distance's gradient is about 1e-6 per pixel on an untrained ConvNet against TV's 7e-4; a
    relative weight keeps TV a fixed share of the step at any scale of the matching gradient. Measured against the
    paper's settings in ``benchmarks/core`` and ``benchmarks/performance`` (side by side with breaching). Everything
    else, the restarts and the choice by matching loss included, is Inverting Gradients'."""

    paper = "variant of Geiping et al. NeurIPS 2020, arXiv:2003.14053 (relative TV weight: gradleak, issue 19)"
    Config = RelativeTVConfig


@dataclass(frozen=True, kw_only=True)
class RelativeTVPlateauConfig(RelativeTVConfig):
    """:class:`RelativeTVConfig` with the "plateau" schedule: the first ×0.1 once the loss has stopped falling."""

    schedule: str = "plateau"


@attack("ig_relative_tv_plateau")
class InvertingGradientsRelativeTVPlateau(InvertingGradientsRelativeTV):
    """gradleak's variant of Inverting Gradients (not in the paper): ``ig_relative_tv`` with the step 1.0 decayed
    ×0.1 once the best candidate's loss has not fallen by 1% in 20 iterations (at the latest at 3/8 of the run, as
    the paper's schedule), then at 2/5 and 4/5 of the remaining iterations (the paper's 5/8 and 7/8 are there
    when the first decay is at 3/8); :class:`gradleak.attacks.matching.Plateau`.

    Why (issue 19): at step 1.0 the loss stops falling after a few dozen iterations whatever the budget, and the
    paper's schedule keeps the step until 3/8 of the run; the decay is where the reconstruction sharpens.
    Measured in ``benchmarks/core`` and ``benchmarks/performance``. ``lr=0.3`` reaches a given PSNR sooner (beside
    breaching: ≤ 0.14 of its wall time on every ConvNet B=1 image) but ends lower at the default audit's 600
    iterations (mean 25.13 against 25.39 dB, worst photo 17.68 against 19.39, on one machine), so it is not the
    default. :class:`InvertingGradientsBatchTV` (``ig_batch_tv``, the default) is this attack with a larger TV share
    for batches."""

    paper = (
        "variant of Geiping et al. NeurIPS 2020, arXiv:2003.14053 (relative TV weight and plateau schedule: gradleak, "
        "issue 19)"
    )
    Config = RelativeTVPlateauConfig


@dataclass(frozen=True, kw_only=True)
class BatchTVConfig(RelativeTVPlateauConfig):
    """:class:`RelativeTVPlateauConfig` with a TV share of 1.0 instead of 0.3 for batches of more than one image."""

    batch_tv: float | None = 1.0


@attack("ig_batch_tv")
class InvertingGradientsBatchTV(InvertingGradientsRelativeTVPlateau):
    """gradleak's variant of Inverting Gradients (not in the paper), the default audit's attack:
    ``ig_relative_tv_plateau`` (relative TV, Adam step 1.0, plateau schedule) with the TV share 0.3 for one image and
    1.0 for a batch (``batch_tv``). On one image it is ``ig_relative_tv_plateau``.

    Why (issue 19): the gradient of a batch is the mean of its images' gradients, so a batch leaves more of the
    images undetermined than one image does and needs more of the prior. Chosen on the bundled photos (PyTorch's
    default weights, and ResNet-18 with He-normal weights), not on the side-by-side benchmark's images: share 1.0
    against 0.3 gives ConvNet B=4 (300 iterations) 20.46 against 19.55 dB (20.23 against 19.49 at 2 threads) and
    ResNet-18 B=8 (100 iterations) 17.62 against 17.19 (He-normal weights, exploratory: 14.20 / 13.57 against 11.37 /
    11.10), while one image on the ConvNet ends lower (22.26 against 25.39 dB);
    ``benchmarks/core/results_convnet_b4_*.md``, ``results_resnet18_b8_ig_relative_tv_plateau*.md``,
    ``results_ig_relative_tv_plateau_tv1.0.md``. Beside breaching on its batches:
    ``benchmarks/performance/results_batch_tv.md``. For short budgets, ``lr=0.3, tv=0.6, patience=10`` reaches a
    given PSNR sooner on one image and ends lower (``benchmarks/performance/results_fast_heldout.md``)."""

    paper = (
        "variant of Geiping et al. NeurIPS 2020, arXiv:2003.14053 (relative TV weight, plateau schedule and TV share "
        "by batch size: gradleak, issue 19)"
    )
    Config = BatchTVConfig
