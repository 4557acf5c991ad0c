"""`metareg shard`: a registered dataset's splits written as LitData shards, for the ``shards`` dataset."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("shard")
@click.argument("dataset")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--dataset-opt", "dataset_opt", multiple=True, metavar="KEY=VALUE",
              help="An option of the dataset (see `metareg info dataset NAME`); repeatable.")
@click.option("--chunk-mb", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Size of each shard file in MB (what object storage sends at once).")
def shard_cmd(dataset: str, out_dir: Path, dataset_opt: tuple[str, ...], chunk_mb: int) -> None:
    """Write DATASET's train, validation and test splits as shards in OUT_DIR (new or empty).

    Then train from them without holding the images in memory, on the same episodes
    as from DATASET itself:

    \b
      metareg shard glyphs shards/glyphs --dataset-opt image_size=28
      metareg run --dataset shards --dataset-opt root=shards/glyphs
      metareg run --dataset shards --dataset-opt root=s3://bucket/glyphs   (a copy of the folder)
    """
    from metareg import kinds
    from metareg.build import resolve
    from metareg.errors import ConfigError
    from metareg.options import parse_assignments
    from metareg.registry import Registry
    from metareg.shard_format import litdata
    from metareg.shard_writer import check_out_dir, write_shards

    # Every check before the dataset is built (which can take long): the folder, the library, the name, the options.
    check_out_dir(out_dir)
    litdata()
    options = parse_assignments(dataset_opt, "--dataset-opt")
    resolved = resolve(Registry.current(), kinds.DATASET.plural, dataset, options)
    if resolved.name == "shards":
        raise ConfigError("shards are already shards: copy the shard folder instead of sharding it again")
    data = resolved.build()
    click.echo(f"Writing {resolved.name} ({data.channels}x{data.image_size}x{data.image_size}) to {out_dir}/")
    written = write_shards(data, out_dir, source=resolved.name, options=options, chunk_bytes=chunk_mb << 20)
    for split, count in written.items():
        classes = len(data.split(split).classes)
        click.echo(f"  {split}: {count} images, {classes} classes")
    click.echo(f"Train from it: metareg run --dataset shards --dataset-opt root={out_dir}")
