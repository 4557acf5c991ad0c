"""`metareg serve`: one few-shot classifier behind an HTTP API and a page (metareg/service.py)."""
from __future__ import annotations

import errno
import socket
from pathlib import Path

import click

from metareg.errors import MetaregError, OptionError

SERVE_HINT = "pip install 'metareg-core[serve]' (FastAPI, uvicorn, python-multipart)"


def _need_serving_stack() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise MetaregError(f"`metareg serve` needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                           f"not installed: {SERVE_HINT}")


def _check_port(host: str, port: int) -> None:
    """Bind once before loading the model, so a taken port is one line, not a traceback after the work."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        why = "it is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise OptionError(f"cannot listen on {host}:{port}: {why}; choose another --port or --host") from None


@click.command("serve")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--checkpoint", "-c", type=click.Path(path_type=Path),
              help="Instead of MODEL: a `metareg run` checkpoint, with --support (enrolments are then not saved).")
@click.option("--support", "-s", type=click.Path(path_type=Path), help="With --checkpoint: SUPPORT/<class>/<image>.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-images", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images one request may carry.")
@click.option("--max-bytes", default=32 << 20, show_default=True, type=click.IntRange(min=1024),
              help="Size of one request body.")
@click.option("--max-pixels", default=40_000_000, show_default=True, type=click.IntRange(min=1),
              help="Pixels of one decoded image (larger ones are refused as decompression bombs).")
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Probabilities returned per query unless the request asks ?top=K.")
@click.option("--index", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="Nearest-prototype search: exact (in chunks) or faiss (approximate; the faiss extra).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")
def serve_cmd(model: Path | None, checkpoint: Path | None, support: Path | None, host: str, port: int,
              max_images: int, max_bytes: int, max_pixels: int, top: int, index: str, device: str) -> None:
    """Serve a .fewshot model over HTTP: predict, enrol and remove classes, and a page at /.

    \b
    Examples:
      metareg serve model.fewshot --port 8000     # then open http://127.0.0.1:8000/
      curl -F images=@cat.jpg http://127.0.0.1:8000/predict
      curl -F images=@z1.jpg -F images=@z2.jpg -X POST http://127.0.0.1:8000/classes/zebra
    """
    if (model is None) == (checkpoint is None):
        raise OptionError("give either MODEL (a .fewshot file) or --checkpoint CKPT --support DIR")
    if checkpoint is not None and support is None:
        raise OptionError("--checkpoint needs --support DIR (SUPPORT/<class>/<image>), or serve a .fewshot MODEL")
    if model is not None and support is not None:
        raise OptionError("a .fewshot MODEL holds its classes: drop --support (enrol more with POST /classes/NAME)")
    _need_serving_stack()
    _check_port(host, port)
    from PIL import Image

    from metareg.files import check_target
    from metareg.predict import FewShotClassifier
    from metareg.service import Limits, Service, create_app

    if model is not None:
        check_target(model)  # enrolments replace it: refuse a link or a device before starting
        clf = FewShotClassifier.load(model, device=device)
    else:
        clf = FewShotClassifier.from_checkpoint(checkpoint, device=device).fit(support)
    if index == "faiss":
        from metareg.prototype_search import import_faiss

        import_faiss()
    Image.MAX_IMAGE_PIXELS = max_pixels  # metareg.images refuses larger images: Pillow's bomb guard
    service = Service(clf, model_path=model, limits=Limits(max_images, max_bytes, max_pixels), top=top, index=index)
    app = create_app(service)
    import uvicorn

    saved = f"enrolments saved to {model}" if model else "enrolments kept in memory only (serve a .fewshot file)"
    click.echo(f"serving {len(clf.classes)} classes ({clf.strategy_name}) at http://{host}:{port}/ ; {saved}; "
               "Ctrl+C stops", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
