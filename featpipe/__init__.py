"""featpipe: frozen-feature extraction plus classical few-shot heads for medical images."""

__version__ = "0.1.0"
