"""Small image generators for generative-prior attacks, with their intermediate feature maps exposed.

A DCGAN-style generator (Radford et al. 2016, arXiv:1511.06434) for square images of 8–64 pixels:
``z (+ class embedding) → Linear → h₀ [w₀, 4, 4] → (upsample ×2, 3×3 conv, LeakyReLU, pixel norm) × n
→ 3×3 conv → tanh``. Pixel normalisation (Karras et al. 2018) replaces BatchNorm so every sample is
generated independently — the attacks ``vmap`` the generator over restarts and search its features
per sample. GIFD's feature-domain search starts at any map ``h_k``: :meth:`Generator.feature` runs the
generator up to ``h_k`` and :meth:`Generator.from_feature` from ``h_k`` to the image. Example::

    G = Generator(GeneratorConfig(size=32, channels=3, num_classes=10))
    z = G.sample_latent(4, generator=torch.Generator().manual_seed(0))
    h1 = G.feature(1, z, y)            # [4, C₁, 8, 8]
    images = G.from_feature(1, h1)     # [4, 3, 32, 32] in [-1, 1]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["Discriminator", "Generator", "GeneratorConfig"]


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Architecture of a prior: image ``size`` × ``size`` with ``channels`` channels; the 4×4 map has
    ``width · 2^(n−1)`` channels (capped at ``max_width``) and each ×2 upsampling halves it.
    ``num_classes`` > 0 makes the generator class-conditional."""

    size: int = 32
    channels: int = 3
    z_dim: int = 64
    width: int = 32
    max_width: int = 256
    num_classes: int = 0

    def __post_init__(self) -> None:
        n = math.log2(self.size / 4) if self.size >= 8 else -1
        if n != int(n) or not 1 <= n <= 4:
            raise InputError(f"prior image size must be 8, 16, 32 or 64, got {self.size}")
        if self.channels not in (1, 3) or self.z_dim < 1 or self.width < 1 or self.num_classes < 0:
            raise InputError(f"bad generator settings: {self}")

    @property
    def n_up(self) -> int:
        return int(math.log2(self.size // 4))

    def widths(self) -> list[int]:
        """Channels of the feature maps h₀ … h_n (4×4 up to size × size)."""
        return [min(self.max_width, self.width * 2 ** (self.n_up - i)) for i in range(self.n_up + 1)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit RMS (Karras et al. 2018, eq. 2)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-3, keepdim=True) + 1e-8)


class _Up(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.LeakyReLU(0.2),
            PixelNorm(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.LeakyReLU(0.2),
            PixelNorm(),
        )


class Generator(nn.Module):
    """DCGAN-style generator exposing its feature maps ``h_0 … h_{n}`` (see the module docstring).

    Images are in [-1, 1], shape ``[B, channels, size, size]``.
    """

    meta: dict[str, Any]  # set by training and loading: what the prior was trained on

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = cfg = config or GeneratorConfig()
        w = cfg.widths()
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim) if cfg.num_classes else None
        z_in = cfg.z_dim * (2 if cfg.num_classes else 1)
        self.head = nn.Linear(z_in, w[0] * 16)
        self.norm = PixelNorm()
        self.blocks = nn.ModuleList([_Up(w[i], w[i + 1]) for i in range(cfg.n_up)])
        self.to_image = nn.Conv2d(w[-1], cfg.channels, 3, padding=1)

    @property
    def num_features(self) -> int:
        """How many feature maps a search can start from (h₀ at 4×4 … h_n at full size)."""
        return len(self.blocks) + 1

    def feature_shape(self, k: int) -> tuple[int, int, int]:
        side = 4 * 2**k
        return self.config.widths()[k], side, side

    def sample_latent(self, n: int, *, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.config.z_dim, generator=generator)

    def sample_labels(self, n: int, *, generator: torch.Generator) -> Tensor | None:
        if not self.config.num_classes:
            return None
        return torch.randint(self.config.num_classes, (n,), generator=generator)

    def feature(self, k: int, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The feature map ``h_k`` for latents ``z`` [B, z_dim] (and class labels ``y`` [B])."""
        if not 0 <= k < self.num_features:
            raise InputError(f"feature index must be in 0..{self.num_features - 1}, got {k}")
        if self.embed is not None:
            if y is None:
                raise InputError("this prior is class-conditional: give labels y")
            z = torch.cat([z, self.embed(y)], dim=-1)
        h = self.norm(F.leaky_relu(self.head(z), 0.2).unflatten(-1, (-1, 4, 4)))
        for block in self.blocks[:k]:
            h = block(h)
        return h

    def from_feature(self, k: int, h: Tensor) -> Tensor:
        """The images generated from feature map ``h_k`` [B, C_k, H_k, W_k]."""
        for block in self.blocks[k:]:
            h = block(h)
        return torch.tanh(self.to_image(h))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.from_feature(0, self.feature(0, z, y))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, y: Tensor | None = None) -> Tensor:
        """``n`` images in [0, 1] from latents (and, if conditional, labels) drawn from ``generator``."""
        z = self.sample_latent(n, generator=generator)
        if y is None:
            y = self.sample_labels(n, generator=generator)
        return (self(z, y) + 1) / 2


class Discriminator(nn.Module):
    """Strided-conv critic with spectral norm (Miyato et al. 2018) and, for a conditional prior, the
    projection term ``⟨embed(y), φ(x)⟩`` (Miyato & Koyama 2018)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        w = list(reversed(config.widths()))
        layers: list[nn.Module] = [sn(nn.Conv2d(config.channels, w[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for i in range(config.n_up):
            layers += [sn(nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.out = sn(nn.Linear(w[-1] * 16, 1))
        self.embed = sn(nn.Embedding(config.num_classes, w[-1] * 16)) if config.num_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        phi = self.body(x)
        out = self.out(phi).squeeze(-1)
        if self.embed is not None and y is not None:
            out = out + (self.embed(y) * phi).sum(-1)
        return out
