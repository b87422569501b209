"""The `dance-analyze` report: inputs -> statistics -> figures -> one self-contained HTML page.

- :mod:`.inputs`: what each PATH is (checkpoint, run folder, model, saved embeddings) and its embeddings;
- :mod:`.compute`: the analysis functions run per subject, the claims table, UMAP, examples (a JSON-able dict);
- :mod:`.figures`: matplotlib figures embedded as PNG data URIs;
- :mod:`.render`: tables, the Jinja2 page (autoescaped), ``metrics.json`` and CSV files, written atomically;
- :mod:`.build`: :func:`build_report`, the whole chain in one call (used by ``dance-analyze``).
"""

from __future__ import annotations

__all__ = ["build_report"]


def build_report(*args, **kwargs):
    """See :func:`dance_analysis.report.build.build_report` (imported lazily: the report pulls in matplotlib)."""
    from .build import build_report as _build_report  # heavy (scipy, 1.5 s): report.progress etc. stay light

    return _build_report(*args, **kwargs)
