"""Plain-torch model zoo (no torchvision): the architectures the gradient-inversion papers attack.

Every model names its classification head in ``head_name`` (a module path to an ``nn.Linear``), so label
recovery and analytic attacks find it by name instead of guessing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def flat_size(body: nn.Module, input_shape: Sequence[int]) -> int:
    """The number of features ``body`` outputs for one input of ``input_shape`` (its training mode is kept);
    InputError when ``body`` cannot take such an input."""
    with torch.no_grad():
        was_training = body.training
        body.eval()
        try:
            n = body(torch.zeros(1, *input_shape)).flatten(1).shape[1]
        except RuntimeError as e:
            raise InputError(f"the model cannot take inputs of shape {tuple(input_shape)}: {e}") from None
        body.train(was_training)
    return int(n)


class MLP(nn.Module):
    """Fully connected ReLU network: flatten → [Linear → ReLU] × depth → Linear head."""

    head_name = "head"

    def __init__(
        self, num_classes: int, input_shape: Sequence[int], width: int = 256, depth: int = 2, bias: bool = True
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class LeNet(nn.Module):
    """The sigmoid LeNet of DLG (Zhu et al. 2019): three stride-2/2/1 5×5 convs with 12 channels, one
    linear layer; weights drawn from U(-0.5, 0.5) as in the DLG code unless ``dlg_init=False``."""

    head_name = "fc"

    def __init__(self, num_classes: int, input_shape: Sequence[int], dlg_init: bool = True):
        super().__init__()
        c = input_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1),
            nn.Sigmoid(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(flat_size(self.body, input_shape), num_classes)
        if dlg_init:
            for p in self.parameters():
                nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class ConvNet(nn.Module):
    """The ConvNet of Inverting Gradients (Geiping et al. 2020): eight 3×3 conv-BN-ReLU layers of
    widths w, 2w, 2w, 4w ×5 with two 3×3 max-pools, then a linear head (width 64: 2.9 M parameters)."""

    head_name = "linear"

    def __init__(self, num_classes: int, input_shape: Sequence[int], width: int = 64, batchnorm: bool = True):
        super().__init__()
        widths = [input_shape[0], width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width, 4 * width]
        layers: list[tuple[str, nn.Module]] = []
        for i in range(8):
            layers.append((f"conv{i}", nn.Conv2d(widths[i], widths[i + 1], 3, padding=1)))
            layers.append((f"bn{i}", nn.BatchNorm2d(widths[i + 1]) if batchnorm else nn.Identity()))
            layers.append((f"relu{i}", nn.ReLU()))
            if i in (5, 7):
                layers.append((f"pool{0 if i == 5 else 1}", nn.MaxPool2d(3)))
        layers.append(("flatten", nn.Flatten()))
        self.body = nn.Sequential(OrderedDict(layers))
        self.linear = nn.Linear(flat_size(self.body, input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.body(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(cin, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = _shortcut(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet (He et al. 2016) with torchvision's parameter names, so its weights load here.

    ``stem="cifar"``: 3×3 stride-1 first conv, no max-pool (for 32×32 images);
    ``stem="imagenet"``: 7×7 stride-2 conv and a 3×3 stride-2 max-pool.
    """

    head_name = "fc"
    layer1: nn.Sequential  # set by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        input_shape: Sequence[int],
        stem: str = "cifar",
    ):
        super().__init__()
        c = input_shape[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', not {stem!r}")
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@MODELS.register("mlp")
def mlp(num_classes: int, input_shape: Sequence[int], **kw) -> nn.Module:
    return MLP(num_classes, input_shape, **kw)


@MODELS.register("lenet")
def lenet(num_classes: int, input_shape: Sequence[int], **kw) -> nn.Module:
    return LeNet(num_classes, input_shape, **kw)


@MODELS.register("convnet")
def convnet(num_classes: int, input_shape: Sequence[int], **kw) -> nn.Module:
    return ConvNet(num_classes, input_shape, **kw)


@MODELS.register("resnet18")
def resnet18(num_classes: int, input_shape: Sequence[int], stem: str = "cifar") -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, input_shape, stem)


@MODELS.register("resnet50")
def resnet50(num_classes: int, input_shape: Sequence[int], stem: str = "cifar") -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, input_shape, stem)


@MODELS.register("resnet18-imagenet")
def resnet18_imagenet(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, input_shape, "imagenet")


@MODELS.register("resnet50-imagenet")
def resnet50_imagenet(num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, input_shape, "imagenet")
