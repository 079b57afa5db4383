"""User-facing errors: one line that says what is wrong and what to do, and an exit code."""


class FeatpipeError(Exception):
    """A user mistake or an unavailable resource. The CLI prints ``str(err)`` and exits with ``exit_code``."""

    exit_code = 1


class ConfigError(FeatpipeError):
    """A bad parameter file, unknown key or bad value (exit code 2, like argparse)."""

    exit_code = 2


class DataError(FeatpipeError):
    """Input data that cannot be used as asked (missing files, too few images for k shots, ...)."""


class CacheError(FeatpipeError):
    """A cache whose recorded provenance does not match the request."""


class WeightsError(FeatpipeError):
    """Pretrained weights that cannot be had offline; never silently replaced by random weights."""


class IntegrityError(DataError):
    """A saved file that does not match its recorded hash, or is not what it claims to be."""
