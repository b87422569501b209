"""Interop at the edges: trained models as sentence-transformers folders, mined negatives as other trainers'
training data, and the project's geometry inside other trainers (:class:`GeometryEvaluator` for
sentence-transformers, :class:`GeometryCallback` for any transformers ``Trainer``, both on an
:class:`EvaluationSet`). Nothing else in the package imports these modules; sentence-transformers is imported only
when a name that needs it is used."""

from __future__ import annotations

__all__ = ["EvaluationSet", "GeometryCallback", "GeometryEvaluator", "space_metrics"]

_HOMES = {"EvaluationSet": "geometry", "space_metrics": "geometry", "GeometryEvaluator": "st_evaluator",
          "GeometryCallback": "callback"}


def __getattr__(name: str):
    """Import the module of ``name`` on first use (sentence-transformers and transformers stay unloaded until a
    name that needs them is asked for)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
