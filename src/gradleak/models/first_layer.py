"""Which layer sees the model's input first: the probe a malicious server runs before planting weights there."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["input_linear"]


def input_linear(model: nn.Module, input_shape: Sequence[int]) -> tuple[str | None, list[str]]:
    """(module path, problems) of the ``nn.Linear`` with bias that receives the model's input unchanged
    (flattened) and whose output goes straight into an ``nn.ReLU`` module.

    Found by running two random inputs through the model with hooks on every module without children: the
    first of them that has parameters must be that ``nn.Linear``, its input must equal the flattened input,
    and the next module called must be an ``nn.ReLU`` taking its output. The model's mode is kept."""
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, mod, args[0], out)))
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as e:
        return None, [f"the model cannot take inputs of shape {tuple(input_shape)}: {e}"]
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    first = next((i for i, c in enumerate(calls) if next(c[1].parameters(), None) is not None), None)
    if first is None:
        return None, ["the model has no layer with parameters"]
    name, module, inp, out = calls[first]
    if not isinstance(module, nn.Linear):
        return None, [f"the first layer is a {type(module).__name__} ({name}), not a fully connected nn.Linear"]
    problems = []
    if not (isinstance(inp, torch.Tensor) and inp.shape == (2, x[0].numel()) and torch.equal(inp, x.flatten(1))):
        problems.append(f"the first layer {name} does not receive the input unchanged (only flattened)")
    if module.bias is None:
        problems.append(f"the first layer {name} has no bias")
    nxt = calls[first + 1] if first + 1 < len(calls) else None
    if nxt is None or not isinstance(nxt[1], nn.ReLU) or nxt[2] is not out:
        problems.append(f"the first layer {name} is not followed by an nn.ReLU module")
    return (name if not problems else None), problems
