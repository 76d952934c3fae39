"""A compact CMA-ES (Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772, 2016) for GGL's
black-box latent search: (μ/μ_w, λ) selection, cumulative step-size adaptation, rank-one and rank-μ
covariance updates. Float64, randomness from the given ``torch.Generator``. Example::

    es = CMAES(torch.zeros(8), sigma=1.0, popsize=16, generator=torch.Generator().manual_seed(0))
    for _ in range(100):
        xs = es.ask()
        es.tell(xs, (xs - 3).pow(2).sum(1))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["CMAES"]


class CMAES:
    def __init__(self, mean: Tensor, *, sigma: float, popsize: int, generator: torch.Generator):
        n = mean.numel()
        self.n, self.lam, self.mu = n, popsize, popsize // 2
        self.mean, self.sigma, self.gen = mean.double().flatten().clone(), float(sigma), generator
        w = math.log(self.mu + 0.5) - torch.log(torch.arange(1, self.mu + 1, dtype=torch.float64))
        self.w = w / w.sum()
        self.mueff = float(1 / self.w.pow(2).sum())
        self.cc = (4 + self.mueff / n) / (n + 4 + 2 * self.mueff / n)
        self.cs = (self.mueff + 2) / (n + self.mueff + 5)
        self.c1 = 2 / ((n + 1.3) ** 2 + self.mueff)
        self.cmu = min(1 - self.c1, 2 * (self.mueff - 2 + 1 / self.mueff) / ((n + 2) ** 2 + self.mueff))
        self.damps = 1 + 2 * max(0.0, math.sqrt((self.mueff - 1) / (n + 1)) - 1) + self.cs
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.pc = torch.zeros(n, dtype=torch.float64)
        self.ps = torch.zeros(n, dtype=torch.float64)
        self.C = torch.eye(n, dtype=torch.float64)
        self.B = torch.eye(n, dtype=torch.float64)
        self.D = torch.ones(n, dtype=torch.float64)
        self.generation = 0

    def ask(self) -> Tensor:
        """λ candidates [λ, n] (float64)."""
        z = torch.randn(self.lam, self.n, generator=self.gen, dtype=torch.float64)
        return self.mean + self.sigma * (z * self.D) @ self.B.T

    def tell(self, xs: Tensor, fitness: Tensor) -> None:
        """Update the distribution from the candidates and their losses (lower is better)."""
        order = torch.argsort(fitness.double().nan_to_num(float("inf")))[: self.mu]
        y = (xs.double()[order] - self.mean) / self.sigma
        yw = self.w @ y
        self.mean = self.mean + self.sigma * yw
        c_inv_sqrt = self.B @ torch.diag(1 / self.D) @ self.B.T
        self.ps = (1 - self.cs) * self.ps + math.sqrt(self.cs * (2 - self.cs) * self.mueff) * (c_inv_sqrt @ yw)
        self.generation += 1
        ps_norm = float(self.ps.norm())
        hsig = ps_norm / math.sqrt(1 - (1 - self.cs) ** (2 * self.generation)) / self.chi_n < 1.4 + 2 / (self.n + 1)
        self.pc = (1 - self.cc) * self.pc + hsig * math.sqrt(self.cc * (2 - self.cc) * self.mueff) * yw
        rank_mu = (y.T * self.w) @ y
        self.C = (
            (1 - self.c1 - self.cmu) * self.C
            + self.c1 * (torch.outer(self.pc, self.pc) + (1 - hsig) * self.cc * (2 - self.cc) * self.C)
            + self.cmu * rank_mu
        )
        self.sigma *= math.exp(min(1.0, (self.cs / self.damps) * (ps_norm / self.chi_n - 1)))
        self.C = (self.C + self.C.T) / 2
        d2, self.B = torch.linalg.eigh(self.C)
        self.D = d2.clamp_min(1e-20).sqrt()
