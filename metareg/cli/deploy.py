"""`metareg predict` and `metareg export`. Heavy imports stay inside the commands."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import click

from metareg.errors import OptionError

OUTPUT_SUFFIXES = (".csv", ".json")


@click.command("predict")
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path),
              help="A `metareg run` checkpoint (.ckpt) or a `metareg export --format safetensors` file.")
@click.option("--model", "-m", type=click.Path(path_type=Path),
              help="A .fewshot file (`metareg export --support`): network, support set and open-set threshold.")
@click.option("--support", "-s", type=click.Path(path_type=Path),
              help="With --checkpoint: one subfolder of labelled images per class: SUPPORT/<class>/<image>.")
@click.option("--query", "-q", "queries", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Image file or folder (searched recursively); repeat for more.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the predictions to FILE.csv or FILE.json.")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep the support set's prepared state (e.g. prototypes) in FILE and reuse it while the "
                   "support files and the model are unchanged.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Query images per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")
@click.option("--invert/--no-invert", default=None,
              help="Flip pixel values (1 - x) after loading. Default: what the training data recorded "
                   "(Omniglot-style datasets store dark-on-light files as bright ink).")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1),
              help="Probability columns shown on the terminal (files always hold every class).")
@click.option("--quiet", is_flag=True, help="Do not print the table.")
def predict_cmd(checkpoint: Path | None, model: Path | None, support: Path | None, queries: tuple[Path, ...],
                output: Path | None, cache: Path | None, batch_size: int, device: str, invert: bool | None, top: int,
                quiet: bool) -> None:
    """Predict the classes of query images from a labelled support folder, or with a .fewshot file.

    \b
    Examples:
      metareg predict -c runs/omniglot/checkpoints/last.ckpt -s support/ -q new_images/ -o predictions.csv
      metareg predict -m model.fewshot -q new_images/      # "unknown" when far from every class
    """
    if output is not None and output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OptionError(f"--output {str(output)!r}: use a .csv or .json file name")
    _check_sources(checkpoint, model, support, cache)
    from metareg.files import atomic_write, check_output
    from metareg.predict import FewShotClassifier, collect_queries, read_support_folder

    # Outputs that would destroy an input, or replace a link or device, are refused before any work.
    inputs = (checkpoint or model, *queries)
    if cache is not None:
        check_output(cache, *inputs)
    if output is not None:
        check_output(output, *inputs, cache)

    # Every input is checked before the model does any work.
    if model is not None:
        files = collect_queries(queries)
        clf = FewShotClassifier.load(model, device=device, batch_size=batch_size)
        clf.invert = clf.invert if invert is None else invert
        n_support = sum(clf.counts) if clf.counts else "stored"
    else:
        n_support = sum(len(v) for v in read_support_folder(support).values())
        files = collect_queries(queries)
        clf = FewShotClassifier.from_checkpoint(checkpoint, device=device, invert=invert, batch_size=batch_size)
    start = time.perf_counter()
    query_images = clf.load_images(files)
    decoded = time.perf_counter()
    if model is None:
        clf.fit(support, cache=cache)
    fitted = time.perf_counter()
    logits = clf.predict_logits(query_images)
    probs, unknown = logits.softmax(-1), clf.unknown(logits).tolist()
    done = time.perf_counter()
    classes = clf.classes
    rows = []
    for path, p, u in zip(files, probs.tolist(), unknown, strict=True):
        best = max(range(len(classes)), key=p.__getitem__)
        rows.append({"query": str(path), "predicted": "unknown" if u else classes[best], "probability": p[best],
                     "probabilities": dict(zip(classes, p, strict=True))})
        if clf.open_set:  # the nearest class stays visible beside the refusal
            rows[-1].update(nearest=classes[best], unknown=bool(u))
    if not quiet:
        _print_table(rows, classes, top)
        if clf.transductive:
            click.echo(f"note: strategy {clf.strategy_name} normalises each batch of queries with its own batch-norm "
                       "statistics (transductive, as in its evaluation): answers depend on which queries are "
                       f"predicted together; here batches of {batch_size}", err=True)
        if cache is not None:
            what = ("support state" if clf.caches_features
                    else f"prepared support images (strategy {clf.strategy_name} adapts on them for every batch)")
            click.echo(f"support cache {cache}: {'reused' if clf.fitted_from_cache else 'written'} ({what})", err=True)
        click.echo(f"{len(rows)} queries, {len(classes)} classes, {n_support} support images; "
                   f"decoding queries {decoded - start:.2f}s, support {fitted - decoded:.2f}s, "
                   f"predicting {done - fitted:.2f}s", err=True)
    if output is not None:
        if output.suffix.lower() == ".json":
            doc = {"checkpoint": str(checkpoint or model), "support": str(support or model), "classes": classes,
                   "predictions": rows}
            atomic_write(output, json.dumps(doc, indent=2) + "\n", inputs=inputs)
        else:
            atomic_write(output, _csv(rows, classes), inputs=inputs)
        if not quiet:
            click.echo(f"wrote {output}", err=True)


def _check_sources(checkpoint: Path | None, model: Path | None, support: Path | None, cache: Path | None) -> None:
    if (checkpoint is None) == (model is None):
        raise OptionError("pass either --checkpoint CKPT with --support DIR, or --model FILE.fewshot")
    if model is not None and (support is not None or cache is not None):
        raise OptionError(f"--model {str(model)!r} holds its own support set, so --support and --cache do not apply; "
                          "change its classes with `metareg enroll`")
    if checkpoint is not None and support is None:
        raise OptionError("--checkpoint needs --support DIR (SUPPORT/<class>/<image>); or pass --model FILE.fewshot")


def _csv(rows: list[dict], classes: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    extra = ["nearest", "unknown"] if rows and "unknown" in rows[0] else []
    writer.writerow(["query", "predicted", "probability", *(f"p:{c}" for c in classes), *extra])
    for r in rows:
        writer.writerow([r["query"], r["predicted"], f"{r['probability']:.6f}",
                         *(f"{r['probabilities'][c]:.6f}" for c in classes), *(str(r[k]) for k in extra)])
    return buf.getvalue()


def _print_table(rows: list[dict], classes: list[str], top: int) -> None:
    if len(classes) <= top:
        header = ["QUERY", "PREDICTED", *classes]
        table = [header] + [[r["query"], r["predicted"], *(f"{r['probabilities'][c]:.3f}" for c in classes)]
                            for r in rows]
    else:
        header = ["QUERY", "PREDICTED", f"TOP {top}"]
        table = [header]
        for r in rows:
            best = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:top]
            table.append([r["query"], r["predicted"], "  ".join(f"{c}={p:.3f}" for c, p in best)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.command("export")
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path),
              help="A `metareg run` checkpoint (.ckpt).")
@click.option("--backbone", help="Instead of -c: a backbone without meta-training (e.g. pretrained=PATH), as a "
                                 "prototype classifier of the --support classes; writes a .fewshot file.")
@click.option("--backbone-opt", "backbone_opt", multiple=True, metavar="KEY=VALUE",
              help="With --backbone: one of its options (`metareg info backbone NAME`); repeatable.")
@click.option("--transform", help="With --backbone: the transform whose evaluation step (e.g. normalisation) runs "
                                  "before the backbone; default none.")
@click.option("--transform-opt", "transform_opt", multiple=True, metavar="KEY=VALUE",
              help="With --backbone: one of the transform's options; repeatable.")
@click.option("--image-size", type=int, help="With --backbone: input side in pixels (default: the backbone's).")
@click.option("--channels", type=int, help="With --backbone: 1 (grey) or 3 (RGB) (default: the backbone's).")
@click.option("--format", "-f", "fmt",
              type=click.Choice(["safetensors", "torchscript", "onnx", "fewshot"], case_sensitive=False),
              help="Default: from the output suffix (.safetensors, .pt, .onnx, .fewshot).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--invert/--no-invert", default=None,
              help="Build pixel inversion into the exported model (default: what the training data recorded).")
@click.option("--support", "-s", type=click.Path(path_type=Path),
              help="fewshot: the classes to store, SUPPORT/<class>/<image> (prototypes or the fitted head are kept).")
@click.option("--max-false-accept", default=0.05, show_default=True, type=float,
              help="fewshot: share of queries of unseen classes that may be accepted; calibrated on episodes of the "
                   "training dataset's validation classes.")
@click.option("--no-open-set", is_flag=True, help="fewshot: store no open-set threshold (never answer unknown).")
@click.option("--embedding-only", is_flag=True, help="onnx: the embedding network alone, images -> features.")
def export_cmd(checkpoint: Path | None, backbone: str | None, backbone_opt: tuple[str, ...], transform: str | None,
               transform_opt: tuple[str, ...], image_size: int | None, channels: int | None, fmt: str | None,
               output: Path, invert: bool | None, support: Path | None, max_false_accept: float, no_open_set: bool,
               embedding_only: bool) -> None:
    """Export a trained model for deployment without metareg's training stack.

    \b
    safetensors  all weights + a JSON header with the config (rebuild with metareg or by hand)
    torchscript  forward(support, support_labels, query) -> probabilities (feature-based strategies)
                 and embed(images) -> features; needs only torch
    onnx         (support, support_onehot, query) -> probabilities for prototype heads, else the
                 embedding network images -> features; see the metadata's "graph"
    fewshot      with --support: ONE deployable file (safetensors + JSON): weights, the prepared
                 support set, class names, the whole preprocessing, the open-set threshold and
                 provenance; `metareg predict -m`, `metareg enroll`, FewShotClassifier.load
    onnx --support  images -> probabilities, logits, features with the prototypes stored
    onnx --embedding-only  images -> features

    Image inputs of the torchscript and onnx files: pixels / 255, converted to the model's
    channels and resized to its image size (see the metadata's "inputs").

    \b
    Without meta-training: --backbone NAME [--backbone-opt pretrained=PATH ...] --support DIR -o model.fewshot
    """
    from metareg.export import export, format_for
    from metareg.files import check_output
    from metareg.predict import FewShotClassifier

    if (checkpoint is None) == (backbone is None):
        raise OptionError("pass either --checkpoint CKPT (a trained run) or --backbone NAME (a backbone without "
                          "meta-training, with --support DIR), not both or neither")
    if backbone is not None:
        from metareg.cli.backbone_export import export_backbone

        return export_backbone(backbone, backbone_opt, transform, transform_opt, image_size, channels, fmt, output,
                               invert, support, no_open_set, embedding_only)
    if image_size is not None or channels is not None or backbone_opt or transform is not None or transform_opt:
        raise OptionError("--backbone-opt, --transform(-opt), --image-size and --channels apply with --backbone; "
                          "a checkpoint records its own")
    fmt = format_for(output, fmt)
    check_output(output, checkpoint)
    if fmt == "fewshot" or (fmt == "onnx" and (support is not None or embedding_only)):
        from metareg.cli.enroll import export_fewshot

        return export_fewshot(checkpoint, output, support, invert=invert, max_false_accept=max_false_accept,
                              open_set=not no_open_set, fmt=fmt, embedding_only=embedding_only)
    if support is not None or embedding_only:
        raise OptionError(f"--support and --embedding-only apply to .fewshot and .onnx files, not {fmt}")
    clf = FewShotClassifier.from_checkpoint(checkpoint, invert=invert)
    path = export(clf.model, output, fmt, invert=clf.invert, inputs=(checkpoint,))
    size = path.stat().st_size
    click.echo(f"wrote {path} ({fmt}, {size / 1e6:.2f} MB; inputs: {clf.channels}x{clf.image_size}x{clf.image_size}, "
               f"invert={clf.invert})")
