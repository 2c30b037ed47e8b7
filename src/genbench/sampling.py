"""The sampler settings a model samples with: one object, made in one place.

``sampler_settings(model, node)`` turns a ``sampler`` config node (or ``sample``'s keywords) into the settings the
model will use: completed with its defaults and checked by the model itself (``model.sampler_settings``), or None
for a model that samples in one pass. Training's sample grids and in-training FID, ``train``'s preflight,
``evaluate``, ``sample``, the report's figures and the bench all take their settings from here and pass the object
on unchanged: to ``model.sample(n, **settings)``, into a protocol's ``sampler`` field, into a score record.
"""

from __future__ import annotations

from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf


class SamplerSettings(dict):
    """Complete, checked, read-only sampler settings: ``sample``'s keywords (``sampler``, ``steps``, ``eta``,
    ``guidance_scale``, ...). A dict, so it goes wherever keywords and JSON go; it cannot be changed after the model
    has checked it, only made anew with :func:`sampler_settings`."""

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("SamplerSettings are read-only: make new ones with genbench.sampling.sampler_settings")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only  # type: ignore[assignment]

    def __reduce__(self):  # pickles and deep-copies as itself, not item by item through __setitem__
        return type(self), (dict(self),)

    __repr__ = dict.__repr__  # logs and messages show the settings, as they did when they were a plain dict


def as_sampler_kwargs(sampler: DictConfig | dict | None) -> dict:
    """``cfg.sampler`` (name, steps, eta, guidance_scale, ...) as ``model.sample`` keyword arguments."""
    if sampler is None:
        return {}
    kwargs = OmegaConf.to_container(sampler, resolve=True) if isinstance(sampler, DictConfig) else dict(sampler)
    if "name" in kwargs:
        kwargs["sampler"] = kwargs.pop("name")
    return kwargs


def sampler_settings(model, sampler: DictConfig | dict | None) -> SamplerSettings | None:
    """The settings ``model`` samples with, from a ``sampler`` node or keywords; None: it takes no sampler. Bad or
    inapplicable settings are the model's GenbenchError, raised here, before any sampling."""
    settings = model.sampler_settings(as_sampler_kwargs(sampler))
    return None if settings is None else SamplerSettings(settings)
