"""White-box probing for label methods: run dummy inputs through the server's model and read the head.

The server knows the model and the input normalisation, so it can feed inputs drawn uniformly from the
data range ([0, 1] per pixel, then normalised as the model expects) and observe what the head sees: the
features ``h`` (the head's input) and the softmax ``p``. LLG's white-box variant (Wainakh et al. 2022)
uses these to estimate the per-sample gradient impact and offset; the min rule uses them to check that the
head's input is non-negative. The model is never modified: a :func:`~gradleak.protocols.stateless` copy
runs in the observation's mode (BatchNorm in train mode uses the dummy batch's statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..observation import Observation


@dataclass(frozen=True)
class Probe:
    features: Tensor  # [n, M] float64: the head's inputs
    probs: Tensor  # [n, N] float64: softmax of the logits


def probe(obs: Observation, n: int, *, generator: torch.Generator) -> Probe:
    """Features and softmax outputs of ``n`` dummy inputs (one batch, the observation's BN mode)."""
    net, params = obs.functional()
    buffers = dict(net.named_buffers())
    x = torch.rand((n, *obs.input_shape), generator=generator)
    if obs.normalization is not None:
        x = obs.normalization.normalize(x)
    seen: list[Tensor] = []
    head = dict(net.named_modules())[obs.head]
    handle = head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits = torch.func.functional_call(net, (params, buffers), (x,))
    finally:
        handle.remove()
    return Probe(seen[0].flatten(1).double(), torch.softmax(logits.double(), -1))
