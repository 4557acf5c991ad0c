"""The recipe file: its ``recipe:`` header checked, its settings validated, merged under a user's overrides.

A recipe is ``<name>.yaml`` in this package. Its top level is RunConfig settings (what a
``--config`` file holds) plus one ``recipe:`` mapping::

    recipe:
      version: 1                      # bumped whenever a setting changes: results name the version
      paper: "Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017"
      table: "Table 1, Omniglot, 5-way 1-shot"
      published: {accuracy: 98.8, ci95: null}   # percent; ci95 null where the paper gives none
      protocol: {ways: 5, shots: 1, queries: 15, episodes: 1000}
      images: {channels: 1, size: 28}
      data: [omniglot/images_background.zip]   # any of these under a data root: the data is here
      sources: [...]                  # where each training detail comes from
      deviations: [...]               # what differs from the paper, and why

Loading refuses a header with a missing or unknown key, settings RunConfig refuses, and a
protocol the settings do not evaluate (test ways, shots, queries, episode count).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from metareg import kinds
from metareg.config import RunConfig
from metareg.errors import ConfigError

HEADER_KEYS = ("version", "paper", "table", "published", "protocol", "images", "data", "sources", "deviations")
PROTOCOL_KEYS = ("ways", "shots", "queries", "episodes")


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    paper: str
    table: str
    accuracy: float  # published, percent
    ci95: float | None  # published half-width, percent; None where the paper gives none
    protocol: dict[str, int]  # ways, shots, queries, episodes
    channels: int
    image_size: int
    data: tuple[str, ...]
    sources: tuple[str, ...]
    deviations: tuple[str, ...]
    settings: dict[str, Any]
    path: str

    @property
    def dataset(self) -> str:
        return self.settings.get("dataset", RunConfig.dataset)

    @property
    def published(self) -> str:
        ci = f" ± {self.ci95:.2f}" if self.ci95 is not None else ""
        return f"{self.accuracy:.2f}{ci} %"

    @property
    def protocol_text(self) -> str:
        p = self.protocol
        return f"{p['ways']}-way {p['shots']}-shot, {p['queries']} queries, {p['episodes']} episodes"

    def config(self) -> RunConfig:
        """The recipe's own settings, validated (names and ranges; component options need the registry)."""
        return RunConfig.from_sources(self.settings)

    def layered(self, *overrides: dict[str, Any]) -> list[dict[str, Any]]:
        """The recipe's settings under ``overrides`` (a config file's, then the command line's): the list to merge.

        Where an override names another component of a kind (``dataset: glyphs`` over the recipe's
        ``omniglot``), the recipe's options of that kind belonged to the component it named and are dropped.
        """
        base = dict(self.settings)
        for kind in kinds.ALL:
            mine = base.get(kind.config_field)
            for later in overrides:
                theirs = later.get(kind.config_field)
                if theirs is not None and theirs != mine:
                    base.pop(kind.options_field, None)
        return [base, *overrides]

    def data_found(self, data_root: Path | None) -> Path | None:
        """The first of the recipe's data files present under ``data_root``, or None.

        ``data`` entries are paths under a data root that holds one folder per dataset, laid out as the
        first-party datasets lay out the metareg cache (``omniglot/images_background.zip``).
        """
        if data_root is None:
            return None
        return next((data_root / rel for rel in self.data if (data_root / rel).exists()), None)

    def dataset_root(self, data_root: Path) -> Path | None:
        """The ``root`` option for the recipe's dataset under ``data_root``: the folder its data was found in."""
        found = self.data_found(data_root)
        if found is None:
            return None
        return data_root / Path(found.relative_to(data_root).parts[0])


def default_data_root() -> Path | None:
    """Where the first-party datasets look by default: ``$METAREG_CACHE_DIR``, else the user cache folder."""
    env = os.environ.get("METAREG_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # the folder metareg-datasets uses by default

    return Path(platformdirs.user_cache_dir("metareg"))


def _folder():
    """Where the recipe files are: this package's data (a test points it at a copy)."""
    return resources.files(__package__)


def names() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in _folder().iterdir() if p.name.endswith(".yaml"))


def text(name: str) -> str:
    """The recipe file ``name`` as written (after :func:`find` has checked the name)."""
    return _folder().joinpath(f"{name}.yaml").read_text("utf-8")


def find(name: str) -> Recipe:
    """The shipped recipe ``name``; an unknown name is refused with the close matches."""
    known = names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"no recipe named {name!r}.{hint} See `metareg recipes` for the list.")
    item = _folder().joinpath(f"{name}.yaml")
    return load(item.read_bytes(), name, f"recipe {name!r} ({item})")


def load_all() -> list[Recipe]:
    return [find(n) for n in names()]


def load(data: bytes, name: str, where: str) -> Recipe:
    """Parse and check one recipe file's bytes; errors start with ``where``."""
    import yaml

    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where} is not valid UTF-8 YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("recipe"), dict):
        raise ConfigError(f"{where} needs a `recipe:` mapping (version, paper, table, ...) beside its settings")
    settings = {k: v for k, v in doc.items() if k != "recipe"}
    head = doc["recipe"]
    _keys(head, HEADER_KEYS, where, "recipe")
    published = head["published"]
    if not isinstance(published, dict):
        raise ConfigError(f"{where}: recipe.published must be a mapping of accuracy and ci95 (percent)")
    _keys(published, ("accuracy", "ci95"), where, "recipe.published")
    protocol = head["protocol"]
    if not isinstance(protocol, dict):
        raise ConfigError(f"{where}: recipe.protocol must be a mapping of {', '.join(PROTOCOL_KEYS)}")
    _keys(protocol, PROTOCOL_KEYS, where, "recipe.protocol")
    images = head["images"]
    if not isinstance(images, dict):
        raise ConfigError(f"{where}: recipe.images must be a mapping of channels and size")
    _keys(images, ("channels", "size"), where, "recipe.images")
    try:
        recipe = Recipe(
            name=name, version=_int(head["version"], "version", where), paper=_text(head["paper"], "paper", where),
            table=_text(head["table"], "table", where),
            accuracy=_percent(published["accuracy"], "published.accuracy", where),
            ci95=None if published["ci95"] is None else _percent(published["ci95"], "published.ci95", where),
            protocol={k: _int(protocol[k], f"protocol.{k}", where) for k in PROTOCOL_KEYS},
            channels=_int(images["channels"], "images.channels", where),
            image_size=_int(images["size"], "images.size", where),
            data=_relative(_texts(head["data"], "data", where), where),
            sources=_texts(head["sources"], "sources", where),
            deviations=_texts(head["deviations"], "deviations", where, empty=True),
            settings=settings, path=where,
        )
        config = recipe.config()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    _check_protocol(recipe, config, where)
    return recipe


def _check_protocol(recipe: Recipe, config: RunConfig, where: str) -> None:
    """The settings must evaluate what the header says the paper evaluated."""
    p = recipe.protocol
    evaluated = {"ways": config.test_ways, "shots": config.test_shots, "queries": config.test_queries,
                 "episodes": config.test_num_tasks}
    setting = {"ways": "test_ways", "shots": "test_shots", "queries": "test_queries", "episodes": "test_num_tasks"}
    for key, value in evaluated.items():
        if value != p[key]:
            raise ConfigError(f"{where}: recipe.protocol.{key} is {p[key]} but the settings give "
                              f"{setting[key]}: {value}; set {setting[key]}: {p[key]} explicitly")


def _keys(mapping: dict, expected: tuple[str, ...], where: str, section: str) -> None:
    unknown = [k for k in mapping if k not in expected]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), expected, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} in {section}{hint}; "
                          f"it takes {', '.join(expected)}")
    missing = [k for k in expected if k not in mapping]
    if missing:
        raise ConfigError(f"{where}: {section} lacks {', '.join(missing)}")


def _int(value, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: recipe.{what} must be a positive integer, got {value!r}")
    return value


def _percent(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ConfigError(f"{where}: recipe.{what} must be a percentage in [0, 100], got {value!r}")
    return float(value)


def _text(value, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: recipe.{what} must be non-empty text, got {value!r}")
    return value.strip()


def _texts(value, what: str, where: str, empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or (not value and not empty) or not all(isinstance(v, str) for v in value):
        need = "a list of text" + ("" if empty else " (at least one)")
        raise ConfigError(f"{where}: recipe.{what} must be {need}, got {value!r}")
    return tuple(v.strip() for v in value)


def _relative(paths: tuple[str, ...], where: str) -> tuple[str, ...]:
    for rel in paths:
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or len(parts) < 2:
            raise ConfigError(f"{where}: recipe.data entry {rel!r} must be DATASET_FOLDER/FILE under a data root "
                              "(relative, no '..'), e.g. omniglot/images_background.zip")
    return paths


def verdict(mean: float, ci95: float, accuracy: float) -> tuple[bool, str]:
    """Whether the published ``accuracy`` lies inside the run's 95% CI (``mean ± ci95``), all in percent.

    The run's interval, not the paper's: every run has one (the paper may give none), and it is the
    claim a reproduction makes ("the paper's figure is a plausible mean for what this run measured").
    """
    low, high = mean - ci95, mean + ci95
    inside = low <= accuracy <= high
    side = "inside" if inside else ("above" if accuracy > high else "below")
    text = (f"{'reproduced' if inside else 'not reproduced'}: the published {accuracy:.2f} % is {side} "
            f"this run's 95% CI [{low:.2f}, {high:.2f}] %")
    if not inside:
        text += f" (difference {mean - accuracy:+.2f} points)"
    return inside, text
