"""What the engine runs for extraction, batch by batch: picklable pieces handed to :meth:`Executor.embed`.

- :func:`decoded_rows` makes the decoded-image cache a backbone reads current (where the batches are read)
  and finds the rows of the images to embed;
- :class:`DecodedBatches` reads decoded-cache rows as uint8 crops at the model's input size;
- :class:`ModelFactory` builds the frozen model on the :class:`~featpipe.core.runtime.Runtime` it is given;
- :func:`model_input` and :func:`embed_batch` turn crops into the normalised batch (pinned for a CUDA device) and
  the batch into float32 embeddings.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd

from featpipe.backbones import weights as weights_mod
from featpipe.backbones.model import FeatureModel
from featpipe.backbones.modelinput import centre_crop, ensure_decoded, normalise
from featpipe.backbones.spec import Preprocess
from featpipe.core.runtime import Runtime
from featpipe.decoded.cache import DecodedImages, DecodeOptions, decoded_path


def decoded_rows(sub: pd.DataFrame, shared=None, *, full: pd.DataFrame, pre: Preprocess, cache_dir, dataset: str,
                  decode, shard, progress: bool) -> tuple[str, np.ndarray]:
    """The decoded-image cache covering ``sub`` (the cache ``pre`` reads made current for ``full`` first, through
    :func:`featpipe.backbones.modelinput.ensure_decoded`): its absolute path and ``sub``'s rows in it. Run on the
    engine (where the batches are read). ``decode``: ``params.decode`` or a
    :class:`featpipe.decoded.cache.DecodeOptions` (with ``max_pixels``)."""
    path = decoded_path(cache_dir, dataset, pre.decoding)
    if shard is not None and not path.exists():  # shards never race on one shared file
        path = path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}.h5")
    opts = decode if isinstance(decode, DecodeOptions) else DecodeOptions(decode.workers, decode.draft)
    opts = DecodeOptions(opts.workers, opts.draft, opts.max_pixels, progress)
    ensure_decoded(full, [pre], cache_dir=cache_dir, dataset=dataset, options=opts, paths={pre.decoding: path})
    with DecodedImages(path) as reader:
        rows = reader.require(sub)
    return os.path.abspath(path), np.asarray(rows, dtype=np.int64)


class DecodedBatches:
    """Picklable reader for the engine: decoded-cache rows -> uint8 crops at the model's input size. The file is
    opened on first use in each process (never pickled)."""

    def __init__(self, path: str, preprocess: Preprocess):
        self.path, self.preprocess, self._reader = path, preprocess, None

    def __getstate__(self) -> dict:
        return {"path": self.path, "preprocess": self.preprocess, "_reader": None}

    def __call__(self, rows) -> np.ndarray:
        if self._reader is None:
            self._reader = DecodedImages(self.path)
        return centre_crop(self._reader.read(np.asarray(rows, dtype=np.int64)), self.preprocess)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class ModelFactory:
    """Picklable model factory for the engine: ``()`` -> the frozen model as ``uint8-normalised batch -> (n, D)``
    float32. ``net``, the network already loaded in this process, is used here and never pickled."""

    def __init__(self, spec, ref, layer, *, device: str, precision: str, net=None):
        self.spec, self.ref, self.layer, self.device, self.precision = spec, ref, layer, device, precision
        self.net = net

    def __getstate__(self) -> dict:
        return {**self.__dict__, "net": None}

    def __call__(self):
        rt = Runtime.of(self.device, self.precision, traits=self.spec.traits)
        model = load_model(self.spec, self.ref, self.layer, runtime=rt, net=self.net)
        return functools.partial(embed_batch, model, runtime=rt)


def load_model(spec, ref, layer, *, runtime: Runtime, net=None):
    """The frozen feature model prepared for ``runtime`` (device, memory format; one per process or Ray
    actor); ``net``: the backbone network when already loaded."""
    if net is None:
        net = weights_mod.load_network(spec, ref)
    return runtime.prepare(FeatureModel(net, spec, layer=layer, weights=ref).eval().requires_grad_(False))


def read_batch(reader, rows, spec) -> np.ndarray:
    """uint8 ``(n, input, input, C)``: the decoded-cache ``rows``, centre-cropped to the model's input size."""
    return centre_crop(reader.read(rows), spec.preprocess)


def model_input(images: np.ndarray, spec, *, pin: bool = False):
    """Cropped uint8 images -> the normalised float32 ``(n, C, H, W)`` batch the model takes; ``pin``: in pinned
    (page-locked) memory, so that the copy to a CUDA device is asynchronous (made in the engine's reading thread,
    while the device runs the previous batch)."""
    x = normalise(images, spec.preprocess)
    return x.pin_memory() if pin else x


def embed_batch(model, x, *, runtime: Runtime) -> np.ndarray:
    """One batch through the model: float32 ``(n, D)``, run as ``runtime`` runs it (:meth:`Runtime.forward`)."""
    return runtime.forward(model, x).numpy()
