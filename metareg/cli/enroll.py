"""`metareg enroll` and the writing of `.fewshot` files (`metareg export ... -o model.fewshot`)."""
from __future__ import annotations

import time
from pathlib import Path

import click

from metareg.errors import OptionError


def export_fewshot(checkpoint: Path, output: Path, support: Path | None, *, invert: bool | None,
                   max_false_accept: float, open_set: bool, fmt: str = "fewshot", embedding_only: bool = False) -> None:
    """Fit the support set, calibrate the open-set threshold, write one file (every input checked first).

    ``fmt="onnx"``: the ONNX graph with the prototypes stored (:mod:`metareg.onnx_support`), or with
    ``embedding_only`` the embedding network alone (no support set needed).
    """
    from metareg.predict import FewShotClassifier

    if fmt == "onnx" and embedding_only:
        if support is not None:
            raise OptionError("--embedding-only stores no classes: drop --support, or drop --embedding-only")
        from metareg.files import atomic_write
        from metareg.onnx_support import onnx_bytes

        clf = FewShotClassifier.from_checkpoint(checkpoint, invert=invert)
        path = atomic_write(output, onnx_bytes(clf, embedding_only=True), inputs=(checkpoint,))
        click.echo(f"wrote {path} (onnx, embedding only: images -> features; {path.stat().st_size / 1e6:.2f} MB)")
        return
    clf = fitted(checkpoint, support, invert=invert, max_false_accept=max_false_accept, open_set=open_set)
    if fmt == "onnx":
        from metareg.files import atomic_write
        from metareg.onnx_support import onnx_bytes

        path = atomic_write(output, onnx_bytes(clf), inputs=(checkpoint,))
    else:
        path = clf.save(output, inputs=(checkpoint,), checkpoint=checkpoint)
    click.echo(f"wrote {path} ({fmt}, {path.stat().st_size / 1e6:.2f} MB; {len(clf.classes)} classes, "
               f"{sum(clf.counts)} support images, strategy {clf.strategy_name}; inputs: "
               f"{clf.channels}x{clf.image_size}x{clf.image_size}, invert={clf.invert})")
    if clf.open_set:
        o = clf.open_set
        click.echo(f"open set: threshold {o['threshold']:.4g} on the {o['score']} calibrated on "
                   f"{o['calibrated_on']['episodes']} episodes of {o['calibrated_on']['classes']} validation classes: "
                   f"false accept {o['false_accept']:.1%}, false reject {o['false_reject']:.1%}, "
                   f"AUROC {o['auroc']:.3f}")


def fitted(checkpoint: Path, support: Path | None, *, invert: bool | None, max_false_accept: float, open_set: bool):
    """The checkpoint's classifier fitted on ``support``, with its open-set calibration."""
    from metareg.predict import FewShotClassifier, read_support_folder

    if support is None:
        raise OptionError("the file stores its classes: pass --support DIR (SUPPORT/<class>/<image>)")
    if open_set and not 0 < max_false_accept < 1:
        raise OptionError(f"--max-false-accept must lie strictly between 0 and 1, got {max_false_accept}")
    folders = read_support_folder(support)
    if open_set and "unknown" in folders:
        raise OptionError("support class 'unknown' clashes with the open-set answer; rename that folder "
                          "or pass --no-open-set")
    clf = FewShotClassifier.from_checkpoint(checkpoint, invert=invert)
    split = None
    if open_set:
        from metareg.open_set import validation_split

        split = validation_split(clf)  # the dataset is rebuilt (and refused) before the support set is fitted
    clf.fit(support)
    if open_set:
        from metareg.open_set import calibrate

        clf.open_set = calibrate(clf, max_false_accept=max_false_accept, split=split)
    return clf


@click.command("enroll")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--class", "name", help="Name of the class to add.")
@click.option("--remove", help="Name of the class to remove.")
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
def enroll_cmd(model: Path, name: str | None, remove: str | None, images: tuple[Path, ...]) -> None:
    """Add a class to a .fewshot file from a few images, or remove one, without retraining.

    \b
    Examples:
      metareg enroll model.fewshot --class zebra photos/zebra/
      metareg enroll model.fewshot --remove zebra

    Prototype strategies update only the new class's row; others refit on the stored support
    images (and say so). The file is rewritten atomically.
    """
    from metareg.predict import FewShotClassifier

    if (name is None) == (remove is None):
        raise OptionError("pass --class NAME IMAGES... to add a class, or --remove NAME to remove one")
    if remove is not None and images:
        raise OptionError(f"--remove takes no images (got {len(images)}); pass only the class name")
    if name is not None and not images:
        raise OptionError(f"--class {name!r} needs its images: metareg enroll MODEL --class NAME IMAGE_OR_FOLDER...")
    clf = FewShotClassifier.load(model)
    start = time.perf_counter()
    how = clf.add_class(name, list(images)) if name is not None else clf.remove_class(remove)
    seconds = time.perf_counter() - start
    clf.save(model, inputs=images)
    what = f"added {name!r} ({clf.counts[-1]} images)" if name is not None else f"removed {remove!r}"
    note = ("only that class's row changed" if how == "incremental"
            else f"strategy {clf.strategy_name} cannot enrol incrementally: refitted on all stored support images")
    click.echo(f"{model}: {what}; {len(clf.classes)} classes; {note} ({seconds:.2f}s)")
