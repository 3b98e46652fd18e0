"""Exceptions raised at the project's boundaries; each message names the file and the fault."""


class RationalityError(Exception):
    """Base class: a bad input the user can fix. The CLI prints the message without a traceback."""


class DataError(RationalityError):
    """A dataset file is missing, corrupt or inconsistent (image, mask, split list)."""


class StoreError(RationalityError):
    """A Zarr store is missing, incomplete, of the wrong kind, or disagrees with another store."""


class ConfigError(RationalityError):
    """A configuration or spec is invalid (unknown key, unknown model, bad value)."""
