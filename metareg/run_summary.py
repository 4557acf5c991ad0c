"""summary.json: a run's test accuracy with everything needed to tell where it came from.

Accuracy and 95% CI over the test episodes, the components, wall time, device, component
options, the git commit of the code (metareg.provenance) and the versions of everything that ran.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metareg.config import RunConfig
from metareg.evaluation import VARIABLE, Report, by_source, summarise
from metareg.files import atomic_write


def finish(run_dir: Path, config: RunConfig, plugins, accuracies, extra: dict) -> tuple[Report, dict[str, Any]]:
    """Summarise the per-episode test ``accuracies`` into ``run_dir/summary.json``; the report and the summary.

    ``accuracies`` is a list, or a table keyed as ``test_episodes.csv`` is (:func:`metareg.evaluation.episode_table`):
    a run with several sources then reports each one (``sources``) and their mean.
    """
    from metareg.provenance import components

    if isinstance(accuracies, Mapping):
        accuracies = by_source(accuracies)
    shape = (VARIABLE,) * 3 if config.episodes == "variable" else (config.eval_ways, config.eval_shots,
                                                                  config.eval_queries)
    report = summarise(accuracies, *shape)
    named = components(config, plugins)  # canonical names (not the alias typed) and every option
    if config.datasets:
        named["dataset"] = _sources(config, plugins)
    summary = {
        **report.as_dict(),
        "line": report.line(),
        "seed": config.seed,
        **{kind: c["name"] for kind, c in named.items()},  # dataset, backbone, transform, strategy
        **extra,
        **_provenance(run_dir, config),
        "components": named,
        "versions": _versions(plugins),
    }
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return report, summary


def _sources(config: RunConfig, plugins) -> dict[str, Any]:
    """The dataset entry of a run with several sources: the run's name (``glyphs+omniglot``), every source's
    options qualified by its name (as ``metareg table`` groups options), and each source as it ran."""
    from metareg.provenance import components
    from metareg.sources import of

    ran = [{**components(config.replace(dataset=s.name, dataset_options=s.options), plugins)["dataset"],
            "weight": s.weight} for s in of(config)]
    options = {f"{s['name']}.{k}": v for s in ran for k, v in s["options"].items()}
    return {"name": config.dataset, "plugin": None, "options": options, "sources": ran}


def _provenance(run_dir: Path, config: RunConfig) -> dict:
    from metareg import provenance
    from metareg.rundir import holder

    # From claiming the directory (this invocation; a resumed run counts its last session) to its summary.
    started = (holder(run_dir) or {}).get("started")
    return {
        "wall_seconds": round(time.time() - started, 2) if isinstance(started, (int, float)) else None,
        "device": provenance.device(config),
        "options": provenance.component_options(config),
        "git": provenance.git_commit(),
    }


def _versions(plugins) -> dict[str, Any]:
    import pytorch_lightning
    import torch

    import metareg

    return {
        "metareg": metareg.__version__,
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "python": platform.python_version(),
        "plugins": {p.distribution or p.name: p.version for p in plugins.plugins if p.status == "ok"},
    }
