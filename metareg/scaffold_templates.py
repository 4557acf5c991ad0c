"""The text of the package ``metareg new-plugin`` writes: one example component per kind, with its tests.

``string.Template`` text: $name, $pkg, $dist, $bounds, $kinds_text; $$ is a literal $.
The hook, record class and contract check of each kind come from :mod:`metareg.kinds`;
what is here is only what a plugin author reads and replaces.
"""
from __future__ import annotations

from dataclasses import dataclass

from metareg import kinds


@dataclass(frozen=True)
class Example:
    """The example component of one kind."""

    suffix: str  # the component is registered as "$name-<suffix>"
    attr: str  # the factory in $pkg/<kind, plural>.py
    summary: str
    source: str  # the text of $pkg/<kind, plural>.py
    tests: str  # appended to tests/test_plugin.py
    provides: tuple[str, ...] = ()  # capabilities the record declares


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A metareg plugin: $kinds_text"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["metareg$bounds", "torch"]

[project.optional-dependencies]
test = ["pytest>=8"]

# metareg finds plugins through this entry-point group: NAME = "module with the hooks".
[project.entry-points.metareg]
$name = "$pkg.plugin"

[tool.setuptools.packages.find]
include = ["$pkg*"]
"""

README = """\
# $dist

A [metareg](https://pypi.org/project/metareg/) plugin providing: $kinds_text.

## Install

```bash
pip install -e .          # from this folder, while developing
metareg list $name-*      # its components, with this distribution's name and version
metareg info backbone $name-cnn   # options of one component (if it has a backbone)
```

## Test

```bash
pytest
```

The tests run metareg's contract checks (`metareg.testing`) on every component, so a
passing suite means `metareg run` can use them.

## Use

```bash
metareg run --dataset <dataset> --backbone <backbone> --strategy <strategy> --transform <transform>
```

## Publish

```bash
python -m build && python -m twine upload dist/*
```

Keep the distribution name `$dist` (import `$pkg`, entry point `$name`).
"""

_BACKBONE = '''\
"""Example backbone. Replace it with yours: keep the keyword-only signature with defaults."""
from __future__ import annotations

import torch
from torch import nn

import metareg


class SmallCNN(nn.Module):
    def __init__(self, channels: int, width: int, depth: int):
        super().__init__()
        layers, cin = [], channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(cin, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = width  # the contract: (N, C, H, W) -> (N, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def small_cnn(*, channels: int = 3, image_size: int = 84, width: int = 32, depth: int = 3) -> nn.Module:
    """A small CNN: `depth` conv-BN-ReLU-maxpool blocks, then global average pooling.

    width: filters in each conv layer, which is also the number of features.
    depth: number of conv blocks; each halves the image size.
    """
    if width < 1 or depth < 1:
        raise metareg.OptionError(
            f"$name-cnn: width and depth must be at least 1, got width={width}, depth={depth}; "
            "pass e.g. --backbone-opt width=32"
        )
    return SmallCNN(channels, width, depth)
'''

_DATASET = '''\
"""Example dataset. Replace it with yours: read files under a `root` option, or download them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import metareg


def patterns(
    *, classes: int = 40, per_class: int = 20, size: int = 28, seed: int = 0
) -> metareg.FewShotDataset:
    """Synthetic few-shot data: each class is a random 4x4 binary pattern, upscaled, plus noise.

    classes: number of classes, split 60/20/20 by class into train/validation/test (at least 10).
    per_class: images per class (at least 2).
    size: height and width of the images in pixels (at least 4).
    seed: seeds the patterns, the noise and the class split.
    """
    for option, value, least in (("classes", classes, 10), ("per_class", per_class, 2), ("size", size, 4)):
        if value < least:
            raise metareg.OptionError(
                f"$name-patterns: {option}={value} is too small, it must be at least {least} "
                f"(--dataset-opt {option}={least})"
            )
    g = torch.Generator().manual_seed(seed)
    shapes = (torch.rand(classes, 1, 4, 4, generator=g) > 0.5).float()
    shapes = F.interpolate(shapes, size=(size, size), mode="nearest")
    labels = torch.arange(classes).repeat_interleave(per_class)
    noise = torch.rand(len(labels), 1, size, size, generator=g)
    images = 0.75 * shapes[labels] + 0.25 * noise  # floats in [0, 1]; from_arrays makes uint8
    names = [f"pattern{c:03d}" for c in range(classes)]  # unique across splits
    return metareg.FewShotDataset.from_arrays(images, labels, name="$name-patterns", class_names=names, seed=seed)
'''

_TRANSFORM = '''\
"""Example transform. Replace it with yours: augment the whole batch, on its device."""
from __future__ import annotations

import torch

import metareg


class Jitter(metareg.Transform):
    def __init__(self, flip: float, brightness: float):
        super().__init__()
        self.flip, self.brightness = flip, brightness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training augmentation of a (N, C, H, W) float batch in [0, 1]."""
        n = x.shape[0]
        # Randomness from torch's generator on the batch's device: seeded runs repeat.
        flip = torch.rand(n, 1, 1, 1, device=x.device) < self.flip
        scale = 1 + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * self.brightness
        return (torch.where(flip, x.flip(-1), x) * scale).clamp(0, 1)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Validation, test and prediction batches pass unchanged."""
        return x


def jitter(
    *, channels: int = 3, image_size: int = 84, flip: float = 0.5, brightness: float = 0.2
) -> metareg.Transform:
    """Random horizontal flip and brightness scaling.

    flip: probability of flipping each image left-right.
    brightness: images are scaled by a factor drawn from [1 - brightness, 1 + brightness].
    """
    if not 0 <= flip <= 1:
        raise metareg.OptionError(f"$name-jitter: flip is a probability in [0, 1], got {flip}")
    if not 0 <= brightness < 1:
        raise metareg.OptionError(f"$name-jitter: brightness must be in [0, 1), got {brightness}")
    return Jitter(flip, brightness)
'''

_STRATEGY = '''\
"""Example strategy. Replace it with yours: map a batch of episodes to query logits."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import metareg


class CosinePrototypes(metareg.Strategy):
    """Cosine similarity between queries and class-mean prototypes, times a learnable scale.

    scale: initial value of the (learnable) scale applied to the cosine similarities.
    """

    def __init__(self, scale: float = 10.0):
        super().__init__()
        if scale <= 0:
            raise metareg.OptionError(f"$name-cosine: scale must be positive, got {scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        support = self.embed(episodes.support)  # (B, S, D)
        query = self.embed(episodes.query)  # (B, Q, D)
        # Class statistics from the labels: support sets may have uneven counts per class.
        prototypes = metareg.class_means(support, episodes.support_labels, episodes.ways)  # (B, ways, D)
        cosine = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
        return cosine * self.log_scale.exp()  # (B, Q, ways)
'''

_BACKBONE_TESTS = '''

def test_backbone_contract():
    # Forward and backward on each (C, H, W) input; out_features matches the output.
    found = check_backbone("$name-cnn", shapes=[(1, 28, 28), (3, 32, 32)], options={"width": 8})
    assert set(found.values()) == {8}


def test_backbone_rejects_bad_width():
    from $pkg.backbones import small_cnn

    with pytest.raises(metareg.OptionError, match="width"):
        small_cnn(width=0)
'''

_DATASET_TESTS = '''

def test_dataset_contract():
    # Disjoint splits, labels without loading images, sample shapes and dtypes, class counts.
    ds = check_dataset(
        "$name-patterns",
        options={"classes": 10, "per_class": 4, "size": 16},
        classes={"train": 6, "validation": 2, "test": 2},
        min_samples_per_class=4,
    )
    assert (ds.channels, ds.image_size) == (1, 16)


def test_dataset_rejects_too_few_classes():
    from $pkg.datasets import patterns

    with pytest.raises(metareg.OptionError, match="classes"):
        patterns(classes=3)
'''

_TRANSFORM_TESTS = '''

def test_transform_contract():
    # Shapes, dtype, device, finite values; the same seed gives the same output.
    check_transform("$name-jitter", channels=3, image_size=32)
    check_transform("$name-jitter", channels=1, image_size=28, options={"flip": 1.0})
'''

_STRATEGY_TESTS = '''

def test_strategy_contract():
    # Finite loss, (B, Q, ways) logits, gradients reach the backbone, uneven support sets.
    check_strategy("$name-cosine")
    check_strategy("$name-cosine", options={"scale": 1.0}, ways=5, shots=1, queries=3)
'''


# In the order new-plugin writes them (and offers them in --kind).
EXAMPLES: dict[kinds.Kind, Example] = {
    kinds.BACKBONE: Example(
        "cnn", "small_cnn",
        "Example: small conv net, conv-BN-ReLU-maxpool blocks and global average pooling",
        _BACKBONE, _BACKBONE_TESTS,
        # The example CNN's forward is a pure function of its parameters, so MAML's torch.func inner
        # loop can run it: say so, or `metareg run --strategy maml` refuses the pairing.
        provides=("functional",),
    ),
    kinds.DATASET: Example(
        "patterns", "patterns",
        "Example: synthetic 4x4 binary patterns upscaled, one pattern per class",
        _DATASET, _DATASET_TESTS,
    ),
    kinds.TRANSFORM: Example(
        "jitter", "jitter",
        "Example: random horizontal flip and brightness jitter",
        _TRANSFORM, _TRANSFORM_TESTS,
    ),
    kinds.STRATEGY: Example(
        "cosine", "CosinePrototypes",
        "Example: cosine similarity to class-mean prototypes with a learnable scale",
        _STRATEGY, _STRATEGY_TESTS,
    ),
}
