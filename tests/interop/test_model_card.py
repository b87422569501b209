"""dance-export writes a model card (README.md) that huggingface_hub.ModelCard.load reads back: front matter with
library_name, pipeline_tag, base_model, tags, datasets and a model-index holding the checkpoint's dev metrics;
a body with the usage, the resolved recipe, how the negatives were mined and the geometry at that checkpoint; and
the command prints the upload command instead of uploading."""

from __future__ import annotations

import json

import pytest
import yaml

import train_support as ts
from dance_analysis.cli.export import main as export_main
from dance_analysis.cli.train import main as train_main

pytest.importorskip("sentence_transformers")
hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real dance-train run: 4 steps of DANCE on the tiny collection, refreshes at steps 0 and 4."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("card")
    manifest = ts.write_tiny_collection(root / "collection", n_docs=24, n_train=8, n_dev=6)
    backbone = ts.tiny_encoder(root / "backbone", dropout=0.0)
    recipe = ts.write_recipe(root / "recipe.yaml", ts.recipe_dict(
        manifest, backbone, root / "cache", optim={"max_steps": 4, "batch_size": 4, "warmup_steps": 1},
        mining={"refresh_every": 4, "top_k": 10, "n": 2}, log={"every": 1, "tensorboard": False,
                                                                "progress": False}))
    out = root / "run"
    try:
        assert train_main([str(recipe), "--output-dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_model_card_reads_back_with_huggingface_hub(tiny_run, tmp_path, capsys, one_torch_thread):
    checkpoint = tiny_run / "checkpoint-4"
    dev = json.loads((checkpoint / "dev_metrics.json").read_text())
    out = tmp_path / "exported"
    assert export_main([str(checkpoint), str(out), "--format", "sentence-transformers",
                        "--repo-id", "someone/tiny-dance"]) == 0
    printed = capsys.readouterr().out
    assert f"hf upload someone/tiny-dance {out} --repo-type model" in printed

    card = hub.ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "sentence-transformers"
    assert data.pipeline_tag == "sentence-similarity"
    assert "dance" in data.tags and "sentence-transformers" in data.tags
    assert data.datasets == ["tiny-msmarco-doc"]
    assert data.model_name == "tiny-dance"
    # the backbone is a folder on this machine: not a Hub model, so no base_model
    assert data.base_model is None
    results = {r.metric_name: r for r in data.eval_results}
    assert set(results) >= {"MRR@10", "nDCG@10"}
    for name, result in results.items():
        assert result.metric_value == pytest.approx(dev[name])
        assert result.dataset_name == "tiny-msmarco-doc" and result.dataset_split == "dev"
    # the body: usage, the resolved recipe (equal to the run's config.yaml), mining, geometry
    text = card.text
    assert "model.encode_query(" in text and "SentenceTransformer('someone/tiny-dance')" in text
    recipe_block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe_block) == yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert "## How the negatives were mined" in text and "top 10 documents" in text
    geometry = [json.loads(line)["geometry"] for line in (tiny_run / "metrics.jsonl").read_text().splitlines()
                if '"geometry"' in line and json.loads(line).get("step") == 4]
    assert geometry, "the trainer logs the geometry at its refresh"
    assert f"| queries.mean_cosine | {geometry[-1]['queries.mean_cosine']:.4f} |" in text


def test_a_hub_backbone_is_the_base_model(tmp_path, capsys, one_torch_thread, tiny_model_dir):
    from dance_analysis.interop.model_card import model_card

    text = model_card("minilm", dim=384, query_max_length=64, doc_max_length=256, router=False,
                      max_abs_diff=0.0)
    path = tmp_path / "README.md"
    path.write_text(text)
    card = hub.ModelCard.load(path)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.library_name == "sentence-transformers" and not card.data.eval_results
