"""Checkpoints: atomic save, exact resume.

`runs/<id>/checkpoints/step-N/` holds
  adapter_model.safetensors, adapter_config.json   peft models: peft's own format (a loadable adapter)
  trainable.safetensors                            other models: every trainable parameter, by name
  optimizer.pt      optimizer state (tensors and plain values: loaded with weights_only=True)
  rng.pt            python, numpy, torch CPU (and CUDA) generator states
  checkpoint.json   the step, data position and loop state, and the size of every file: written last

Each checkpoint is written into a temp folder beside it (`.step-N.<random>.tmp`), every file fsynced,
checkpoint.json last, then renamed into place. So a folder `step-N` whose checkpoint.json is valid and
whose files have the sizes it lists is complete; anything else is never considered, and temp folders
left by a killed process are removed by `clean_partial`. The lr schedule is a pure function of the
step, so it needs no state of its own.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

MARKER = "checkpoint.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


class TrainingDiverged(RuntimeError):
    """Loss, gradient norm or weights became NaN/inf; the run stops and keeps its last good checkpoint."""


@dataclass
class TrainState:
    """Everything the loop needs to continue exactly, besides weights, optimizer and RNG states."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # data position: the next micro-batch is batch `batch` of epoch `epoch`
    batch: int = 0
    tokens: int = 0
    loss: float = float("nan")  # train loss of this step
    elapsed_s: float = 0.0
    val_loss: float | None = None  # evaluated at this very step, if it was
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    monitor: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # early stopping ended the run here

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        d = dict(d)
        d["val_losses"] = [(int(s), float(v)) for s, v in d.get("val_losses", [])]
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: TrainState

    @property
    def step(self) -> int:
        return self.state.step


def checkpoints_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


# --------------------------------------------------------------------------------------------------
# Finding checkpoints


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint in `path` if it is complete (valid marker, every listed file at its size), else None."""
    m = _STEP_DIR.match(path.name)
    marker = path / MARKER
    if not m or not marker.is_file():
        return None
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or int(meta["state"]["step"]) != int(m.group(1)):
            return None
        for name, size in meta["files"].items():
            f = path / name
            if not f.is_file() or f.stat().st_size != size:
                return None
        return Checkpoint(path, TrainState.from_dict(meta["state"]))
    except (ValueError, KeyError, TypeError, OSError):
        return None


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, by step."""
    if not root.is_dir():
        return []
    found = [read_checkpoint(p) for p in root.iterdir() if p.is_dir()]
    return sorted((c for c in found if c is not None), key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def best_checkpoint(root: Path) -> Checkpoint | None:
    """The complete checkpoint with the lowest val loss evaluated at its step (earliest on ties)."""
    scored = [c for c in list_checkpoints(root) if c.state.val_loss is not None]
    return min(scored, key=lambda c: (c.state.val_loss, c.step)) if scored else None


def clean_partial(root: Path) -> list[Path]:
    """Remove temp folders a killed save or prune left behind (`.step-N.*.tmp`); return them."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Keep the last `keep` complete checkpoints plus the best by val loss; remove the others."""
    found = list_checkpoints(root)
    best = best_checkpoint(root)
    keep_paths = {c.path for c in found[-keep:]} | ({best.path} if best else set())
    removed = []
    for c in found:
        if c.path not in keep_paths:
            # Rename first: a prune killed half-way must never leave a step-N folder with files missing.
            doomed = Path(tempfile.mkdtemp(prefix=f".{c.path.name}.", suffix=".del.tmp", dir=root))
            os.replace(c.path, doomed / c.path.name)
            shutil.rmtree(doomed)
            removed.append(c.path)
    return removed


# --------------------------------------------------------------------------------------------------
# Saving


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": random.getstate(),
        # Plain values and tensors only, so the file loads with weights_only=True.
        "numpy": [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    root: Path,
    model: nn.Module,
    optimizer: Any,
    state: TrainState,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Checkpoint:
    """Write `root/step-N` atomically (temp folder, fsync, marker last, rename) and return it.

    `model` is the unwrapped model. Raises TrainingDiverged, writing nothing, when a trainable weight is
    NaN/inf: a checkpoint is only ever a good one. `weights` (every trainable parameter, by name) and
    `optimizer_state` (a torch.optim state dict): the whole state gathered from a sharded model, written in
    place of the model's and the optimizer's own (which hold one process's shard).
    """
    import torch
    from safetensors.torch import save_file

    trainable = _trainable(model)
    if weights is not None:
        trainable = {n: weights[n] for n in trainable}
    bad = [n for n, p in trainable.items() if not bool(torch.isfinite(p).all())]
    if bad:
        last = latest_checkpoint(root)
        raise TrainingDiverged(
            f"step {state.step}: non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            f"not saved; last good checkpoint: {last.path if last else 'none'}"
        )
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        if _is_peft(model):
            model.save_pretrained(tmp, state_dict=weights)  # type: ignore[operator]
        else:
            save_file(
                {n: p.detach().contiguous() for n, p in trainable.items()}, tmp / "trainable.safetensors"
            )
        torch.save(
            optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt"
        )
        torch.save(rng_states(), tmp / "rng.pt")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in files:
            _fsync(tmp / name)
        meta = {"format": FORMAT, "state": asdict(state), "files": files}
        with (tmp / MARKER).open("w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        if final.exists():  # the same step saved again (a re-run from an earlier checkpoint)
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old.tmp", dir=root))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Checkpoint(final, state)


# --------------------------------------------------------------------------------------------------
# Loading


def load_weights(ckpt: Checkpoint, model: nn.Module) -> None:
    """Put the checkpoint's trainable weights into `model` (built with the same method); every one must match."""
    from safetensors.torch import load_file

    names = set(_trainable(model))
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        result: Any = set_peft_model_state_dict(model, load_file(ckpt.path / "adapter_model.safetensors"))
        missing = names & set(result.missing_keys)
        unexpected = list(result.unexpected_keys)
    else:
        weights = load_file(ckpt.path / "trainable.safetensors")
        missing = names - set(weights)
        unexpected = sorted(set(weights) - names)
    if missing or unexpected:
        raise ValueError(
            f"{ckpt.path} does not match the model: missing {sorted(missing)[:3]}, unexpected {unexpected[:3]}; "
            "was it saved with another method or model?"
        )
    if not _is_peft(model):
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)


def load_optimizer_file(ckpt: Checkpoint) -> dict[str, Any]:
    import torch

    state: dict[str, Any] = torch.load(ckpt.path / "optimizer.pt", map_location="cpu", weights_only=True)
    return state


def load_rng(ckpt: Checkpoint) -> None:
    import torch

    set_rng_states(torch.load(ckpt.path / "rng.pt", weights_only=True))


def load_checkpoint(ckpt: Checkpoint, model: nn.Module, optimizer: Any) -> TrainState:
    """Restore weights, optimizer state and RNG states; return the loop state to continue from."""
    load_weights(ckpt, model)
    optimizer.load_state_dict(load_optimizer_file(ckpt))
    load_rng(ckpt)
    return ckpt.state


__all__ = [
    "MARKER",
    "Checkpoint",
    "TrainState",
    "TrainingDiverged",
    "best_checkpoint",
    "checkpoints_root",
    "clean_partial",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_optimizer_file",
    "load_rng",
    "load_weights",
    "prune_checkpoints",
    "read_checkpoint",
    "save_checkpoint",
]
