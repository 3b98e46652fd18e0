"""Exceptions raised at the project's boundaries; each message names the file and the fault."""

from __future__ import annotations


class RationalityError(Exception):
    """Base class: a bad input the user can fix. The CLI prints the message without a traceback."""


class DataError(RationalityError):
    """A dataset file is missing, corrupt or inconsistent (image, mask, split list)."""


class StoreError(RationalityError):
    """A Zarr store is missing, incomplete, of the wrong kind, or disagrees with another store."""


class ConfigError(RationalityError):
    """A configuration or spec is invalid (unknown key, unknown model, bad value).

    Args:
        reason: what is wrong, in one line.
        key: the key path the error is about, relative to the spec that was checked (``lr``,
            ``options.mask_threshold``), if known; the message is then ``<key>: <reason>``.
    """

    def __init__(self, reason: str, key: str = "") -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.reason = reason
        self.key = key

    def within(self, path: str) -> ConfigError:
        """The same error seen from ``path``'s parent: ``path`` prefixed to its key.

        ``ConfigError("must be a number", "lr").within("methods.lp")`` is about ``methods.lp.lr``.
        """
        if not self.key:
            return ConfigError(self.reason, path)
        return ConfigError(self.reason, f"{path}{'' if self.key.startswith('[') else '.'}{self.key}")
