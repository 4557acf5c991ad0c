"""The core's own components, registered through the ``metareg`` entry-point group like every plugin's.

The default transform of a run, ``none``, belongs to the core (a run needs no augmentation
package), yet it comes through the same door as third-party components: the entry point
``core`` of the ``metareg-core`` distribution names this module. So ``metareg list`` shows
it with its package, and ``--load-plugins`` / ``--disable-plugins`` treat it like any other.
So is the dataset ``shards``, the reader of the folders the core command ``metareg shard`` writes.
The factories are lazy references, so listing them imports neither torch nor LitData.
"""
from __future__ import annotations

from metareg.hookspecs import hookimpl
from metareg.records import DatasetSpec, TransformSpec


@hookimpl
def metareg_transforms():
    yield TransformSpec(
        "none",
        "metareg.transform:identity",
        summary="No augmentation: images pass through unchanged",
        aliases=("identity",),
    )


@hookimpl
def metareg_datasets():
    # The reader of the folders `metareg shard` (a core command) writes, for any registered dataset: the format
    # lives in the core beside its writer, so it serves third-party datasets too.
    yield DatasetSpec(
        "shards",
        "metareg.shard_reader:shards",
        summary="A dataset written by `metareg shard`, streamed from LitData shards (local or s3://): bounded memory",
    )
