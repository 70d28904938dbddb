"""Checkpoints that survive crashes: atomic writes, plain contents, newest-valid lookup.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: no pickled classes, nothing executed on load.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from txl_audio.atomic import temp_beside
from txl_audio.config import RunConfig
from txl_audio.errors import TxlAudioError
from txl_audio.model import TransformerXL
from txl_audio.quality import long_term_predictor
from txl_audio.tokenizers import Tokenizer, tokenizer_from_dict

CHECKPOINT_GLOB = "ckpt_*.pt"
_STEP_RE = re.compile(r"ckpt_(\d+)\.pt$")


class CheckpointError(TxlAudioError, ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a kill at any moment leaves either the old file or the
    complete new one, never a partial file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; any problem is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad magic, foreign pickle...
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "the file is truncated or corrupt"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a txl_audio checkpoint (missing 'model' or 'config')")
    return state


def checkpoint_step(path: str | Path) -> int:
    m = _STEP_RE.search(str(path))
    return int(m.group(1)) if m else -1


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step checkpoints in ``run_dir``, newest first."""
    return sorted(Path(run_dir).glob(CHECKPOINT_GLOB), key=checkpoint_step, reverse=True)


def latest_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu", report=print
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``run_dir`` that loads; unreadable newer ones are reported by path and
    skipped. None when the folder holds no checkpoint; CheckpointError when none of them is valid."""
    paths = list_checkpoints(run_dir)
    if not paths:
        return None
    bad = []
    for p in paths:
        try:
            return p, load_checkpoint(p, map_location)
        except CheckpointError as e:
            bad.append(str(e))
            report(f"warning: skipping {e}")
    raise CheckpointError(f"no valid checkpoint in {run_dir}: " + "; ".join(bad))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a run directory (its best.pt, else its newest step checkpoint), or the name of
    a model shipped in the package (``speech16``, ``speech8``: txl_audio/models)."""
    from txl_audio.models import named_path

    named = named_path(str(path)) if not Path(path).exists() else None
    if named is not None:
        if not named.is_file():
            raise CheckpointError(f"{path}: the named model's file {named} is missing from this installation "
                                  "(reinstall txl-audio, or train it with its recipe: "
                                  "txl_audio/models/README.md)")
        return named
    path = Path(path)
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path}: run directory holds no checkpoint (best.pt or {CHECKPOINT_GLOB})")
        return found[0]
    return path


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[TransformerXL, Tokenizer, RunConfig]:
    """(model in eval mode, tokenizer, RunConfig) from a checkpoint file or run directory."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path, map_location="cpu")
    config = RunConfig.from_dict(state["config"])
    model = TransformerXL(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match its config: {str(e)[:300]}") from None
    model.to(device).eval()
    attach_long_term(model, state.get("corpus_stats"))
    return model, tokenizer_from_dict(state["tokenizer"]), config


def attach_long_term(model: TransformerXL, corpus: dict[str, Any] | None) -> None:
    """Give a 16-bit head's prior the training corpus's long-term-spectrum predictor (of the prior's
    order) from the checkpoint's corpus figures: what it predicts while sampling (issue 28; see
    :func:`txl_audio.generate.open_loop_prior`). Nothing for models without a prior, or without the
    figures (checkpoints before 2026-12-07: their open loop predicts 0)."""
    lp = getattr(model, "lp", None)
    lt = (corpus or {}).get("long_term")
    if lp is None or lt is None:
        return
    order = lp.config.ols_order if hasattr(lp, "config") else lp.order
    if order > len(lt["autocorrelation"]) - 1:
        return
    lp.long_term = long_term_predictor(lt, order)


# ---- training state helpers: everything a resumed run needs, as weights_only-loadable plain data ----


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt_{step}.pt"


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest step checkpoints (keep <= 0 keeps all); returns the removed."""
    if keep <= 0:
        return []
    removed = list_checkpoints(run_dir)[keep:]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors, numpy scalars as Python numbers and tuples as lists, so that
    ``torch.load(weights_only=True)`` reads it back (data stream states may hold numpy values)."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def rng_state() -> dict[str, Any]:
    """The torch (CPU and current CUDA device), numpy and Python generator states as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
