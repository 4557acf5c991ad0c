"""`metareg export --backbone NAME --support DIR -o model.fewshot`: a prototype classifier without meta-training."""
from __future__ import annotations

from pathlib import Path

import click

from metareg.errors import OptionError


def export_backbone(backbone: str, backbone_opt: tuple[str, ...], transform: str | None, transform_opt: tuple[str, ...],
                    image_size: int | None, channels: int | None, fmt: str | None, output: Path, invert: bool | None,
                    support: Path | None, no_open_set: bool, embedding_only: bool) -> None:
    """Every option checked first; then the backbone built, the support set fitted, one file written."""
    from metareg.backbone_export import from_backbone
    from metareg.export import format_for
    from metareg.files import check_output
    from metareg.options import parse_assignments

    if format_for(output, fmt) != "fewshot":
        raise OptionError(f"--backbone writes a .fewshot file (support set included); name the output "
                          f"{Path(output).with_suffix('.fewshot').name} or pass --format fewshot")
    if embedding_only:
        raise OptionError("--embedding-only applies to ONNX exports of a checkpoint; --backbone writes a .fewshot file")
    source = click.get_current_context().get_parameter_source("max_false_accept")
    if source is not None and source.name != "DEFAULT":
        raise OptionError("--max-false-accept needs validation classes to calibrate on, which a backbone without "
                          "meta-training does not have; drop it (the file stores no open-set threshold)")
    options = parse_assignments(backbone_opt, "--backbone-opt")
    transform_options = parse_assignments(transform_opt, "--transform-opt")
    check_output(output, support)
    clf = from_backbone(backbone, options, support, image_size=image_size, channels=channels, invert=bool(invert),
                        transform=transform or "none", transform_options=transform_options)
    path = clf.save(output, inputs=(support,))
    click.echo(f"wrote {path} (fewshot, {path.stat().st_size / 1e6:.2f} MB; {len(clf.classes)} classes, "
               f"{sum(clf.counts)} support images; backbone {clf.provenance['backbone']} without meta-training, "
               f"prototypes of its embeddings; inputs: {clf.channels}x{clf.image_size}x{clf.image_size}, "
               f"invert={clf.invert})")
    if not no_open_set:
        click.echo("open set: no threshold stored (no validation classes to calibrate on without meta-training); "
                   "every query gets its nearest class")
