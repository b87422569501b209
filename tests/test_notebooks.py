"""The notebooks in notebooks/: committed without outputs, and each runs top to bottom against two tiny real
runs (ANCE and DANCE, two checkpoints each) that this module trains on a tiny generated collection."""

from __future__ import annotations

import os
import sys
import time

import pytest

import train_support as ts

NOTEBOOKS = sorted((ts.REPO / "notebooks").glob("*.ipynb"))
NOTEBOOK_SECONDS = 120


def _ids(paths):
    return [p.name for p in paths]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    book = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(book.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} have outputs or execution counts; "
                       f"clear them before committing (e.g. jupyter nbconvert --clear-output --inplace)")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two tiny runs trained in-process: ANCE and DANCE, 2 steps each, checkpoints at steps 0 and 2."""
    import torch

    from dance_analysis.training.config import recipe_from_dict
    from dance_analysis.training.loop import train

    root = tmp_path_factory.mktemp("notebook-runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old = os.environ.get("DANCE_CACHE")
    os.environ["DANCE_CACHE"] = str(root / "cache")
    try:
        manifest = ts.write_tiny_collection(root / "collection")
        encoder = ts.tiny_encoder(root / "model")
        runs = {}
        for objective in ("ance", "dance"):
            recipe = recipe_from_dict(ts.recipe_dict(
                manifest, encoder, root / "cache", name=f"tiny-{objective}",
                loss={"objective": objective},
                optim={"max_steps": 2, "warmup_steps": 1},
                mining={"refresh_every": 2},
                log={"every": 1, "tensorboard": False, "progress": False})).validate()
            runs[objective] = root / f"tiny-{objective}"
            train(recipe, runs[objective])
            assert sorted(p.name for p in runs[objective].glob("checkpoint-*")) == ["checkpoint-0", "checkpoint-2"]
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("DANCE_CACHE", None)
        else:
            os.environ["DANCE_CACHE"] = old
    return runs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path, tiny_runs, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    # the kernel must be this interpreter (the venv's ipykernel): jupyter_client runs the "python3" spec that
    # ipykernel installs into sys.prefix with sys.executable; install it there when a fresh venv lacks it
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)

    monkeypatch.setenv("DANCE_NOTEBOOK_RUN_A", str(tiny_runs["ance"]))
    monkeypatch.setenv("DANCE_NOTEBOOK_RUN_B", str(tiny_runs["dance"]))
    monkeypatch.setenv("DANCE_NOTEBOOK_UMAP_SAMPLE", "60")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, kernel_name="python3", timeout=NOTEBOOK_SECONDS,
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.monotonic()
    client.execute()  # raises CellExecutionError naming the cell on the first error
    elapsed = time.monotonic() - start
    errors = [cell.source[:80] for cell in book.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, errors
    assert elapsed < NOTEBOOK_SECONDS, f"{path.name} took {elapsed:.0f} s"
    images = sum("image/png" in out.get("data", {}) for cell in book.cells for out in cell.get("outputs", []))
    assert images >= 1, f"{path.name}: no figures"
    print(f"{path.name}: {elapsed:.1f} s")
