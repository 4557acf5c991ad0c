"""Exceptions that carry a message meant for the user.

The CLI prints :class:`MetaregError` messages without a traceback; anything else is
a bug and keeps its traceback.
"""


class MetaregError(Exception):
    """An error caused by input the user can fix; the message says how."""


class PluginError(MetaregError):
    """A plugin failed to load or register (raised in strict mode)."""


class ComponentNotFound(MetaregError, LookupError):
    """No registered component has the requested name."""


class ComponentConflict(MetaregError):
    """Two plugins register the same component name."""


class OptionError(MetaregError, ValueError):
    """A component option is unknown or has a value of the wrong type."""


class ConfigError(MetaregError, ValueError):
    """A run configuration value is invalid."""


class DataError(MetaregError, ValueError):
    """A dataset is missing, corrupt, or too small for the requested episodes."""


class CheckpointError(MetaregError):
    """A checkpoint is corrupt, foreign, or from an incompatible version."""


class WriteError(MetaregError):
    """A file could not be written (full disk, permissions, not a regular file, output equals an input).

    The message names the path and the reason; the previous file, if any, is intact. Not an
    ``OSError`` on purpose: handlers that retry on ``OSError`` (downloads) must not swallow it.
    """
