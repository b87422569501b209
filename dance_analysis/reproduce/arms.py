"""The arms of the experiment and how each fold trains them.

``zero-shot`` is the backbone as published; ``ance`` trains the paper's ANCE model shape from it; ``dance-stage1``
tunes the normalisation from the fold's selected ANCE checkpoint; ``dance`` adds the dual loss from the fold's
selected stage-1 checkpoint (Li et al., DANCE, ICTIR 2021, section 3: DANCE starts from ANCE and trains in two
stages). Stage 1 against ANCE isolates the normalisation, DANCE against stage 1 the dual task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DanceError


@dataclass(frozen=True)
class Arm:
    """One arm: its name, its recipe (``None``: not trained) and the arm whose selected checkpoint it starts from."""

    name: str
    label: str
    recipe: str | None = None
    starts_from: str | None = None


ZERO_SHOT = Arm("zero-shot", "MiniLM zero-shot")
ARMS: tuple[Arm, ...] = (
    ZERO_SHOT,
    Arm("ance", "ANCE", "train/rag24-ance.yaml"),
    Arm("dance-stage1", "DANCE stage 1 (normalisation)", "train/rag24-dance-stage1.yaml", starts_from="ance"),
    Arm("dance", "DANCE (stage 2, + dual loss)", "train/rag24-dance.yaml", starts_from="dance-stage1"),
)
TRAINED: tuple[Arm, ...] = tuple(arm for arm in ARMS if arm.recipe)
ARM_BY_NAME = {arm.name: arm for arm in ARMS}

#: (treatment, control, what the difference isolates). The first one decides the paper's claims.
CONTRASTS: tuple[tuple[str, str, str], ...] = (
    ("dance", "ance", "DANCE vs ANCE: the paper's contrast"),
    ("dance-stage1", "ance", "normalisation (stage 1 vs ANCE)"),
    ("dance", "dance-stage1", "dual loss (DANCE vs stage 1)"),
    ("ance", "zero-shot", "ANCE training vs the start"),
    ("dance", "zero-shot", "DANCE vs the start"),
)


def run_dir(runs_dir: Path, fold: int, arm: str) -> Path:
    """Where fold ``fold`` trains ``arm``."""
    return Path(runs_dir) / f"fold{fold}" / arm


def train_command(arm: Arm, runs_dir: Path, fold: int, folds: int, fold_seed: int, seed: int,
                  overrides: Sequence[str]) -> list[str]:
    """The ``dance-train`` arguments that train ``arm`` on fold ``fold`` (``--resume`` when its folder exists).

    User overrides come first; the fold, the seed, the name and (for the stages) the starting run are set after
    them, so that they always hold."""
    if arm.recipe is None:
        raise DanceError(f"arm {arm.name!r} is not trained")
    out = run_dir(runs_dir, fold, arm.name)
    cmd = [arm.recipe, "--output-dir", str(out)]
    sets = list(overrides) + [f"data.folds={folds}", f"data.fold={fold}", f"data.fold_seed={fold_seed}",
                              f"optim.seed={seed}", f"name=rag24-{arm.name}-fold{fold}"]
    if arm.starts_from:
        sets += [f"model.backbone={run_dir(runs_dir, fold, arm.starts_from)}", "model.select=best"]
    for item in sets:
        cmd += ["--set", item]
    if out.exists():
        cmd.append("--resume")
    return cmd
