"""The arms of the experiment, where each one branches from, and how each fold and seed trains them.

The paper's chain (Li et al., DANCE, ICTIR 2021, section 3): ANCE; DANCE stage 1 (normalisation tuning) from an
ANCE checkpoint; DANCE stage 2 (+ the dual loss) from a stage-1 checkpoint. Here every branch point is a fixed
step written in the arm's recipe (``model.select: step-<N>``), not a checkpoint chosen on dev data, and every
trained arm ends at the same total compute (its own steps plus those of the checkpoints it branched from), so that
stage 1 against ANCE isolates the normalisation and stage 2 against stage 1 the dual task. The positive control
is stage 2 with the dual weight at 1.0. The recipes are the single source of the step numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DanceError
from ..training.config import load_recipe


@dataclass(frozen=True)
class Arm:
    """One arm: its name and label; its recipe (``None``: not trained; then ``backbone`` is the model that is
    encoded as it is); the trained arm it branches from."""

    name: str
    label: str
    recipe: str | None = None
    starts_from: str | None = None
    backbone: str | None = None


START = Arm("start", "start: MiniLM, first 3 layers (untrained for the task)", backbone="ance")
REFERENCE = Arm("minilm", "MiniLM (6 layers) zero-shot, reference", backbone="minilm")
ARMS: tuple[Arm, ...] = (
    START,
    REFERENCE,
    Arm("ance", "ANCE", "train/rag24-ance.yaml"),
    Arm("dance-stage1", "DANCE stage 1 (normalisation)", "train/rag24-dance-stage1.yaml", starts_from="ance"),
    Arm("dance", "DANCE (stage 2, + 0.1 dual loss)", "train/rag24-dance.yaml", starts_from="dance-stage1"),
    Arm("dance-control", "positive control (stage 2, dual weight 1.0)", "train/rag24-dance-control.yaml",
        starts_from="dance-stage1"),
)
TRAINED: tuple[Arm, ...] = tuple(arm for arm in ARMS if arm.recipe)
UNTRAINED: tuple[Arm, ...] = tuple(arm for arm in ARMS if not arm.recipe)
ARM_BY_NAME = {arm.name: arm for arm in ARMS}

#: (treatment, control, what the difference isolates). The first one decides the paper's claims.
CONTRASTS: tuple[tuple[str, str, str], ...] = (
    ("dance", "ance", "DANCE vs ANCE: the paper's contrast"),
    ("dance-stage1", "ance", "normalisation (stage 1 vs ANCE)"),
    ("dance", "dance-stage1", "dual loss (DANCE vs stage 1)"),
    ("dance-control", "dance-stage1", "positive control (dual weight 1.0 vs stage 1)"),
    ("ance", "start", "ANCE training vs its start"),
    ("dance", "start", "DANCE vs the start"),
)


@dataclass(frozen=True)
class Plan:
    """Step numbers of one trained arm, read from its recipe and divided by ``scale_down``: ``steps`` trained,
    ``branch`` the step of the parent run it starts from (``None`` for ANCE), ``offset`` the total steps of its
    ancestors at the branch point (so that ``offset + step`` is the compute its checkpoint ``step`` has had),
    ``refresh_every``."""

    steps: int
    branch: int | None
    offset: int
    refresh_every: int


def _scaled(value: int, scale_down: int, what: str) -> int:
    if value % scale_down:
        raise DanceError(f"--scale-down {scale_down} does not divide {what} ({value})")
    return value // scale_down


def plans(scale_down: int = 1, root: Path | None = None) -> dict[str, Plan]:
    """The :class:`Plan` of every trained arm, from the recipes (relative to ``root``, default: the working
    directory). Checks that the compared arms end at equal total compute."""
    out: dict[str, Plan] = {}
    for arm in TRAINED:
        recipe = load_recipe(Path(root or ".") / arm.recipe)
        steps = _scaled(recipe.optim.max_steps, scale_down, f"{arm.recipe} optim.max_steps")
        refresh = _scaled(recipe.mining.refresh_every, scale_down, f"{arm.recipe} mining.refresh_every")
        branch = offset = None
        if arm.starts_from:
            select = recipe.model.select
            if not select.startswith("step-"):
                raise DanceError(f"{arm.recipe}: model.select must be a fixed branch step (step-<N>), got "
                                 f"{select!r}")
            branch = _scaled(int(select[5:]), scale_down, f"{arm.recipe} model.select")
            parent = out[arm.starts_from]
            if branch > parent.steps or branch % parent.refresh_every:
                raise DanceError(f"{arm.recipe}: branch step {branch} is not a checkpoint of {arm.starts_from} "
                                 f"({parent.steps} steps, a checkpoint every {parent.refresh_every})")
            offset = parent.offset + branch
        out[arm.name] = Plan(steps, branch, offset or 0, refresh)
    totals = {name: p.offset + p.steps for name, p in out.items()}
    if len(set(totals.values())) != 1:
        raise DanceError(f"the trained arms must end at equal total compute; the recipes give {totals}")
    return out


def run_dir(runs_dir: Path, fold: int, arm: str, seed: int) -> Path:
    """Where fold ``fold`` trains ``arm`` with training seed ``seed``."""
    return Path(runs_dir) / f"fold{fold}" / f"{arm}-seed{seed}"


def train_command(arm: Arm, runs_dir: Path, fold: int, folds: int, fold_seed: int, seed: int,
                  overrides: Sequence[str], plan: Plan) -> list[str]:
    """The ``dance-train`` arguments that train ``arm`` on fold ``fold`` with seed ``seed`` (``--resume`` when its
    folder exists).

    User overrides come first; the fold, the seed, the name, the steps of ``plan`` and (for the stages) the parent
    run and branch step are set after them, so that they always hold."""
    if arm.recipe is None:
        raise DanceError(f"arm {arm.name!r} is not trained")
    out = run_dir(runs_dir, fold, arm.name, seed)
    cmd = [arm.recipe, "--output-dir", str(out)]
    sets = list(overrides) + [f"data.folds={folds}", f"data.fold={fold}", f"data.fold_seed={fold_seed}",
                              f"optim.seed={seed}", f"name=rag24-{arm.name}-fold{fold}-seed{seed}",
                              f"optim.max_steps={plan.steps}", f"mining.refresh_every={plan.refresh_every}"]
    if arm.starts_from:
        sets += [f"model.backbone={run_dir(runs_dir, fold, arm.starts_from, seed)}",
                 f"model.select=step-{plan.branch}"]
    for item in sets:
        cmd += ["--set", item]
    if out.exists():
        cmd.append("--resume")
    return cmd
