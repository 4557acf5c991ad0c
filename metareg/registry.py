"""Looking up components by name: aliases, qualified names, conflicts, suggestions."""
from __future__ import annotations

import difflib

from metareg import kinds
from metareg.errors import ComponentConflict, ComponentNotFound
from metareg.plugins import PluginSet, Provided, get_plugins


def normalise_kind(kind: str) -> str:
    """The plural name of ``kind``; singular forms are accepted wherever a kind is typed."""
    return kinds.get(kind).plural


class Registry:
    """All components provided by a :class:`PluginSet`, indexed by kind and name."""

    def __init__(self, plugins: PluginSet):
        self.plugins = plugins

    @classmethod
    def current(cls) -> Registry:
        return cls(get_plugins())

    def components(self, kind: str) -> list[Provided]:
        kind = normalise_kind(kind)
        return sorted(
            (p for p in self.plugins.provided if p.kind == kind),
            key=lambda p: (p.record.name, p.plugin.name),
        )

    def names(self, kind: str) -> list[str]:
        return sorted({p.record.name for p in self.components(kind)})

    def conflicts(self, kind: str) -> dict[str, list[Provided]]:
        """Names (or aliases) that more than one plugin registers."""
        by_name: dict[str, list[Provided]] = {}
        for p in self.components(kind):
            for n in (p.record.name, *p.record.aliases):
                by_name.setdefault(n, []).append(p)
        return {n: ps for n, ps in by_name.items() if len({id(x.plugin) for x in ps}) > 1}

    def get(self, kind: str, name: str) -> Provided:
        """Resolve ``name`` or ``plugin:name`` (or an alias) to exactly one component."""
        kind = normalise_kind(kind)
        singular = kinds.get(kind).singular
        pool = self.components(kind)
        plugin_name, _, short = name.rpartition(":")
        if plugin_name:
            pool = [p for p in pool if p.plugin.name == plugin_name or p.plugin.distribution == plugin_name]
        # A name and an alias conflict alike: were names preferred, a plugin could take
        # over a first-party alias (a strategy named `protonet`) without a word.
        matches = [p for p in pool if short == p.record.name or short in p.record.aliases]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            listing = "\n".join(
                f"  {p.qualified_name}{'' if p.record.name == short else f' (alias {short!r})'}"
                f"  from {p.plugin.distribution or '?'} {p.plugin.version or '?'}"
                for p in matches
            )
            raise ComponentConflict(
                f"{singular} {short!r} is registered by more than one plugin:\n{listing}\n"
                f"Pick one with its qualified name, e.g. {matches[0].qualified_name!r}, or uninstall one of them."
            )
        raise ComponentNotFound(self._not_found(kind, singular, name, plugin_name))

    def _not_found(self, kind: str, singular: str, name: str, plugin_name: str) -> str:
        available = self.names(kind)
        known = sorted({n for p in self.components(kind) for n in (p.record.name, *p.record.aliases)})
        msg = f"unknown {singular} {name!r}."
        close = difflib.get_close_matches(name.rpartition(":")[2], known, n=1, cutoff=0.6)
        if close:
            msg += f" Did you mean {close[0]!r}?"
        if plugin_name and not any(
            p.name == plugin_name or p.distribution == plugin_name for p in self.plugins.plugins
        ):
            msg += f" No plugin is named {plugin_name!r}."
        # One line, like every other refusal: the name, the closest match, and what there is to choose from.
        msg += f" Available {kind}: {', '.join(available) if available else '(none installed)'}."
        broken = [p for p in self.plugins.broken]
        if broken:
            msg += " Broken plugins (see `metareg list`): " + ", ".join(p.label for p in broken) + "."
        return msg

