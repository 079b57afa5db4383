"""featpipe: frozen-feature extraction plus classical few-shot heads for medical images."""

from featpipe.core.versions import __version__  # noqa: F401
