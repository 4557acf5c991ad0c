"""Augmentation chains."""
from __future__ import annotations

import metareg


def identity(*, channels: int = 3, image_size: int = 84) -> metareg.Transform:
    """No augmentation for training, nothing for evaluation either."""
    return metareg.Transform()
