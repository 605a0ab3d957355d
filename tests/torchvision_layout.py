"""A hand-written ResNet-50 with torchvision's parameter names (torchvision is not installed here).

``resnet50()`` is torchvision's ``resnet50`` (v1.5: the stride of a stage's first block on its
3x3 convolution, a max pool padded by 1). ``resnet50(caffe_style=True)`` is the same module
tree computing the original MSRA/Caffe ResNet-50 of ``prototxt/resnet50`` (stride on the first
1x1 convolution, max pool without padding in ceil mode), as Caffe-style PyTorch ports (mmcv's
``style='caffe'``, Detectron) do: the net whose weights the ``torchvision-resnet50`` mapping
carries over with identical outputs. Used by tests/test_torch_state.py and benchmarks/bench_infer.py.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        first, middle = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=first, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=middle, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000,
                 caffe_style: bool = False, width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, ceil_mode=True) if caffe_style else nn.MaxPool2d(3, 2, padding=1)
        self.layer1 = self._stage(width, layers[0], 1, caffe_style)
        self.layer2 = self._stage(width * 2, layers[1], 2, caffe_style)
        self.layer3 = self._stage(width * 4, layers[2], 2, caffe_style)
        self.layer4 = self._stage(width * 8, layers[3], 2, caffe_style)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, num_classes)

    def _stage(self, planes: int, blocks: int, stride: int, caffe_style: bool) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, caffe_style)]
        self.inplanes = out
        layers += [Bottleneck(out, planes, stride_in_1x1=caffe_style) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000, caffe_style: bool = False, width: int = 64) -> ResNet:
    """torchvision's resnet50 (``width`` < 64: the same names and depth, narrower, for quick tests)."""
    return ResNet((3, 4, 6, 3), num_classes, caffe_style, width)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking weights: random BatchNorm statistics and affine parameters too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.num_batches_tracked.fill_(1000)
    return model.eval()
