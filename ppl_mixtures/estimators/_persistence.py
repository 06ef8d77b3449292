"""Saving and loading estimators in the safe file format of :mod:`ppl_mixtures.io`.

:class:`PersistenceMixin` gives :class:`~ppl_mixtures.estimators._base.MixtureEstimator` its
:meth:`~PersistenceMixin.save` and :meth:`~PersistenceMixin.load`; a family supplies what is
stored beside the arguments and fitted attributes through the hooks ``_param_tensors()``,
``_extra_state()`` and ``_restore(content)``.
"""

from __future__ import annotations

import os
from typing import Any

import pyro
import torch

from ppl_mixtures import io
from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators import _continuation
from ppl_mixtures.estimators._validation import resolve_device

# rebuilt by ``_restore`` from the stored tensors, never written as fitted attributes
_REBUILT = ("model_", "guide_", "params_", "param_store_state_", "networks_")


class PersistenceMixin:
    """``save``/``load`` of a fitted estimator (see the module docstring)."""

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the estimator to ``path`` in the safe format of :mod:`ppl_mixtures.io`.

        The file holds the arguments, the fitted attributes and tensors, the priors and the
        library versions; it is written atomically and :meth:`load` rebuilds an estimator
        whose predictions, scores and continued training equal this one's. Reading it runs
        no code (no pickle).
        """
        self._check_fitted()
        fitted = {k: v for k, v in vars(self).items()
                  if k.endswith("_") and not k.startswith("_") and k not in _REBUILT}
        content = {
            "class": type(self).__name__,
            "arguments": self.get_params(deep=False),
            "fitted": fitted,
            "params": {k: v.detach() for k, v in self._param_tensors().items()},
            "extra": self._extra_state(),
            "dtype": self._dtype,
            "priors": getattr(self.model_, "priors", None),
        }
        try:
            io.write(path, "estimator", content)
        except TypeError as error:
            raise TypeError(f"cannot save this {type(self).__name__}: {error}") from None

    def _extra_state(self) -> dict[str, Any]:
        """State beyond the public attributes that :meth:`save` must keep (a hook)."""
        return {}

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto"):
        """Read an estimator written by :meth:`save`; nothing in the file is executed.

        Parameters
        ----------
        path : str or path-like
        device : str, default "auto"
            Where the fitted tensors go.

        Raises
        ------
        ppl_mixtures.io.FileFormatError
            When the file is a pickle, damaged, of another format version, or holds another
            estimator class.
        """
        content, _ = io.read(path, "estimator")
        if content.get("class") != cls.__name__:
            raise io.FileFormatError(
                f"{os.fspath(path)} holds a {content.get('class')!r}, not a {cls.__name__}; "
                "read it with ppl_mixtures.load_estimator(path)"
            )
        return cls._from_content(content, device)

    def _placeholder_row(self) -> torch.Tensor:
        """One row of zeros: builds a guide's global parameters as a row of data would."""
        return torch.zeros(1, self.n_features_in_, dtype=self._dtype, device=self._device)

    @classmethod
    @keeps_global_rng
    def _from_content(cls, content: dict, device: str):
        """Rebuild an estimator from what :meth:`save` wrote (already read from disk)."""
        est = cls(**{**content["arguments"], "device": device})
        for name, value in content["fitted"].items():
            setattr(est, name, value)
        est._dtype = content["dtype"]
        est._device = resolve_device(device)
        content["params"] = {k: v.to(est._device) for k, v in content["params"].items()}
        with pyro.get_param_store().scope() as state:
            est._restore(content)
        est.param_store_state_ = state
        est._warm_key = _continuation.fit_key(est, est.n_features_in_)
        return est
