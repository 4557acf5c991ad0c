"""Lightning checkpoints written the way metareg writes every file (:mod:`metareg.files`).

Lightning's own writer streams into the destination, so a crash or a full disk mid-save
leaves a truncated ``last.ckpt`` where the previous good one was. This one serialises in
memory, then writes a temporary file beside the destination and renames it into place.

Plug it into a trainer with ``pl.Trainer(plugins=[AtomicCheckpointIO()])``.
"""
from __future__ import annotations

import io
import os
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from metareg.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic and whose write failures are :class:`metareg.WriteError`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()
        # In memory first: torch reports a failing file write as a C++ error (or aborts),
        # which would hide the OS reason; a buffer cannot fail that way.
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getbuffer())
