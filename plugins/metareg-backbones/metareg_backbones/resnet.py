"""torchvision's ResNet-18, trunk only (no classifier), adapted to the dataset.

The first conv takes the dataset's channel count. Images of 32 pixels or less get
a CIFAR-style stem (3x3 stride-1 conv, no max-pool) instead of ImageNet's 7x7
stride-2 conv and max-pool, which would shrink a 28x28 image to 7x7 before the
first residual block. The parameter names are torchvision's, so torchvision's own
ImageNet checkpoint (``resnet18-f37072fd.pth``, placed in the weights cache by the
user; nothing is downloaded) loads as is; its ``fc`` classifier is ignored and, on
grayscale data, its RGB input filters are summed into one channel.
"""
from __future__ import annotations

import torch
from torch import nn

import metareg
from metareg_backbones.base import Backbone, finish


class ResNetTrunk(Backbone):
    input_conv = "conv1.weight"
    pretrained_ignore = ("fc.",)

    def __init__(self, channels: int, small_input: bool, width: int = 64):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        if width != 64:
            # torchvision hard-codes 64-128-256-512: narrower stages from its own blocks, under the same names.
            w = [width, 2 * width, 4 * width, 8 * width]
            net.bn1 = nn.BatchNorm2d(width)
            net.layer1, net.layer2 = _stage(w[0], w[0], 1), _stage(w[0], w[1], 2)
            net.layer3, net.layer4 = _stage(w[1], w[2], 2), _stage(w[2], w[3], 2)
            net.fc = nn.Linear(w[3], 1)
        if small_input:
            self.conv1 = nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = net.maxpool
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1, self.relu = net.bn1, net.relu
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_features = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(-2, -1))


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Two torchvision BasicBlocks, the first with a 1x1 conv + BN shortcut when the shape changes."""
    from torchvision.models.resnet import BasicBlock

    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(BasicBlock(cin, cout, stride, down), BasicBlock(cout, cout))


@metareg.pretraining_options
def resnet18(
    *,
    channels: int = 3,
    image_size: int = 84,
    small_input: bool | None = None,
    width: int = 64,
    pretraining: metareg.Pretraining,
) -> nn.Module:
    """ResNet-18 from torchvision, trunk only: 512-d average-pooled features; weights never downloaded.

    small_input: use a 3x3 stride-1 stem without max-pool (CIFAR-style); default: true for images of 32 pixels or less.
        ImageNet weights need the 7x7 stem (small_input=false).
    width: channels of the first stage, doubled at each of the next three (64 is torchvision's ResNet-18,
        512 features); smaller values give a cheaper network with 8*width features.
    """
    if small_input is None:
        small_input = image_size <= 32
    if width < 8 or width % 8:
        raise metareg.OptionError(f"resnet18: width must be a positive multiple of 8, got {width}")
    model = ResNetTrunk(channels, small_input, width)
    return finish(model, name="resnet18", pretraining=pretraining)
