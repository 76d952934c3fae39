"""The Cocktail Party Attack — Kariyappa, Guo, Maeng, Xiong, Suh, Qureshi & Lee, "Cocktail Party Attack:
Breaking Aggregation-Based Privacy in Federated Learning using Independent Component Analysis", ICML 2023
(arXiv:2209.05578).

Through a fully connected first layer ``z = W x + b`` the weight gradient of a batch is ``∂L/∂W = Mᵀ X``
(``X`` the B inputs as rows, ``M`` the per-sample output gradients, the ``1/B`` folded in): every row of
it is a linear mixture of the same B inputs. A sum or mean of several clients' gradients of that layer
(secure aggregation) is a mixture of all their inputs, and so is a FedAvg delta of plain local SGD
(``−lr Σ_k Mₖᵀ X``). Recovering ``X`` is blind source separation: centre, whiten (PCA to B components)
and rotate to the most non-Gaussian, independent components (ICA), which are the inputs up to order,
scale and sign.

What this implementation does, and where it departs from the paper:

- ICA is scikit-learn's FastICA (symmetric fixed-point iteration, contrast ``fun``), not the paper's
  gradient-based optimisation of negentropy + total variation + a mutual-independence penalty on the
  unmixing vectors.
- The paper's total-variation prior enters as the *domain* of the contrast: by default FastICA unmixes the
  horizontal and vertical finite differences of each gradient row (``domain="gradient"``; the mixture
  is linear, so it commutes with any linear filter), whose sparsity is what total variation measures.
  The unmixing found there is applied to the unfiltered gradient. On the bundled photos (B=16, width 256,
  two seeds) this lifted the mean PSNR from 12–13 dB (ICA on the raw pixels, ``domain="pixels"``) to 23–27 dB.
- Scale and sign: with a bias, ``∂L/∂b = Mᵀ 1``, so the bias gradient is the estimated mixing matrix times
  each component's scale; its least-squares fit gives every component's scale and sign (an algebraic
  identity, not an image prior). Without a bias each component is scaled to the dataset's statistics
  (RMS 1 in the model's normalised input space, where every channel has mean 0 and std 1) and its sign is
  the one whose image in [0, 1] needs less clipping (a range prior, since total variation itself is
  unchanged by a sign flip).
- The batch size must be known; more components than the layer's width or the input dimension cannot be
  separated (the mixture has rank at most ``min(width, d)``). Sources must be independent: crops of one
  photo, or images of one kind (faces, Fashion-MNIST) at large B, separate poorly (see the benchmark).

Example::

    result = CocktailParty().run(obs, generator=torch.Generator().manual_seed(0))
    result.assumptions["kurtosis"]   # per component: near 0 means a Gaussian-like, likely unseparated mix
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import InputError
from ...labels import LabelResult
from ...observation import Observation
from ..base import Attack, AttackResult, attack
from ..common import denormalize
from ..steps import Step, StepCallback, no_progress
from .fc import first_linear

FUNS = ("logcosh", "exp", "cube")
DOMAINS = ("gradient", "pixels")
WHITENINGS = ("unit-variance", "arbitrary-variance")


@dataclass(frozen=True, kw_only=True)
class CocktailConfig:
    """FastICA settings. ``components`` defaults to the batch size; ``fun`` is FastICA's contrast
    (``exp`` separated the bundled photos best of the three); ``domain`` is where the contrast is measured
    (``gradient``: finite differences of the images, the total-variation view; ``pixels``: the values).
    ``iterations`` caps FastICA's fixed-point iterations, ``tol`` is its convergence tolerance."""

    iterations: int = 200
    tol: float = 1e-4
    fun: str = "exp"
    whiten: str = "unit-variance"
    domain: str = "gradient"
    components: int | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise InputError(f"cocktail: iterations must be >= 1, got {self.iterations}")
        if not self.tol > 0:
            raise InputError(f"cocktail: tol must be > 0, got {self.tol}")
        for name, value, allowed in (("fun", self.fun, FUNS), ("whiten", self.whiten, WHITENINGS)):
            if value not in allowed:
                raise InputError(f"cocktail: {name} must be one of {allowed}, got {value!r}")
        if self.domain not in DOMAINS:
            raise InputError(f"cocktail: domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.components is not None and self.components < 1:
            raise InputError(f"cocktail: components must be >= 1, got {self.components}")


def image_differences(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Horizontal and vertical finite differences of each row seen as an image ``shape`` (C, H, W),
    concatenated: ``[n, C·H·(W−1) + C·(H−1)·W]``. Inputs that are not images ([d]) get 1-D differences."""
    n = rows.shape[0]
    if len(shape) != 3:
        return np.diff(rows, axis=1)
    img = rows.reshape(n, *shape)
    return np.concatenate([np.diff(img, axis=3).reshape(n, -1), np.diff(img, axis=2).reshape(n, -1)], axis=1)


def unmix(g: np.ndarray, shape: tuple[int, ...], k: int, cfg: CocktailConfig, seed: int) -> tuple[np.ndarray, dict]:
    """The unmixing matrix ``[k, n]`` (components × gradient rows) and FastICA's diagnostics."""
    from scipy.stats import kurtosis
    from sklearn.decomposition import FastICA

    signals = image_differences(g, shape) if cfg.domain == "gradient" else g
    ica = FastICA(
        n_components=k, whiten=cfg.whiten, fun=cfg.fun, max_iter=cfg.iterations, tol=cfg.tol, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is reported in the result instead
        sources = ica.fit_transform(signals.T)  # samples = pixels (or differences), features = rows
    return ica.components_, {
        "iterations": int(ica.n_iter_),
        "converged": int(ica.n_iter_) < cfg.iterations,
        "kurtosis": kurtosis(sources, axis=0).tolist(),  # excess kurtosis: 0 for a Gaussian
    }


def scale_by_bias(sources: np.ndarray, mixing: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """Inputs from unscaled sources ``[k, d]``: ``∂L/∂b = mixing · scales`` (least squares) gives each scale."""
    scales, *_ = np.linalg.lstsq(mixing, gb, rcond=None)
    safe = np.where(np.abs(scales) > 1e-12 * np.abs(scales).max(), scales, 1.0)
    return sources / safe[:, None]


def scale_by_prior(sources: np.ndarray, obs: Observation) -> tuple[np.ndarray, list[int]]:
    """Without a bias: RMS 1 in normalised input space, and the sign whose image needs less clipping to [0, 1]."""
    d = sources.shape[1]
    x = sources * (np.sqrt(d) / np.maximum(np.linalg.norm(sources, axis=1, keepdims=True), 1e-300))
    signs = []
    for j in range(len(x)):
        cand = torch.from_numpy(np.stack([x[j], -x[j]])).view(2, *obs.input_shape)
        img = obs.normalization.denormalize(cand) if obs.normalization is not None else cand
        outside = (img - img.clamp(0, 1)).abs().flatten(1).sum(1)
        signs.append(1 if outside[0] <= outside[1] else -1)
    return x * np.asarray(signs, dtype=x.dtype)[:, None], signs


def separate(obs: Observation, k: int, cfg: CocktailConfig, seed: int) -> tuple[np.ndarray, dict]:
    """``k`` inputs ``[k, d]`` (the model's normalised input space, flattened) separated from the first layer's
    weight update, scaled by the bias gradient (or the prior without a bias), and the evidence."""
    name, _, _ = first_linear(obs)
    g = obs.update[f"{name}.weight"].detach().cpu().double().numpy()
    gb = obs.update.get(f"{name}.bias")
    unmixing, diag = unmix(g, tuple(obs.input_shape), k, cfg, seed)
    sources = unmixing @ g  # unmixing applied to the uncentred rows keeps each input's mean
    mixing = np.linalg.pinv(unmixing)
    assumptions: dict = {"layer": name, "components": k, "domain": cfg.domain, **diag}
    if gb is not None:
        x = scale_by_bias(sources, mixing, gb.detach().cpu().double().numpy())
        assumptions["scale"] = "bias gradient (exact for a perfect separation)"
    else:
        x, signs = scale_by_prior(sources, obs)
        assumptions |= {"scale": "RMS 1 in normalised space; sign by the [0, 1] range", "signs": signs}
    assumptions["mixing_condition"] = float(np.linalg.cond(mixing))
    return x, assumptions


@attack("cocktail")
class CocktailParty(Attack):
    """Blind source separation (ICA) of the first fully connected layer's gradient into the batch's inputs.

    Paper: Kariyappa et al., ICML 2023 (arXiv:2209.05578). Needs: the model's first op is an ``nn.Linear``
    (a bias gives exact scale and sign), the batch size known and at most ``min(width, input dim)``. Works on
    FedSGD gradients, aggregates of several clients' gradients and FedAvg deltas of plain local SGD. Settings:
    :class:`CocktailConfig`; deviations from the paper in the module docstring."""

    paper = "Kariyappa et al. ICML 2023 (arXiv:2209.05578)"
    Config = CocktailConfig

    def problems(self, obs: Observation) -> list[str]:
        name, _, p = first_linear(obs)
        if name is None:
            return p  # a missing bias (the only problem first_linear reports for an nn.Linear) is fine here
        layer = dict(obs.model.named_modules())[name]
        problems: list[str] = []
        k = self.config.components or obs.batch_size
        if obs.batch_size is None and self.config.components is None:
            problems.append("the batch size is unknown to the server (ICA separates exactly B components)")
        elif k is not None and k > min(layer.out_features, layer.in_features):
            problems.append(
                f"{k} components cannot be separated from the {layer.out_features}×{layer.in_features} gradient "
                f"of {name}: its rank is at most min(width, input dim) = {min(layer.out_features, layer.in_features)}"
            )
        if k is not None and k < 2:
            problems.append("one sample needs no separation: use analytic_fc (exact for B=1 with a bias)")
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
        k = self.config.components or obs.known_batch_size()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        x, assumptions = separate(obs, k, self.config, seed)
        on_step(Step(assumptions["iterations"], self.config.iterations, 0.0, "ica"))
        images = denormalize(obs, torch.from_numpy(x).to(obs.dtype).view(k, *obs.input_shape))
        return AttackResult(
            name=self.name,
            images=images,
            iterations=assumptions["iterations"],
            seconds=time.perf_counter() - t0,
            final_loss=0.0,
            labels=None if labels is None else list(labels.labels),
            assumptions=assumptions,
            config=self.config_json(),
        )
