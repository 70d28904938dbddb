"""Named models shipped inside the package: ``txl_audio.load("speech16")``, ``txl-audio compress FILE``
(speech16 by default), ``txl-audio evaluate speech8 ...``. Each is a checkpoint holding only the
weights, the config and the tokenizer (loaded with ``torch.load(weights_only=True)``); the recipe that
trained it, its numbers and its training data's licence are in this folder's README.md.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent

# name -> (file, what it is)
NAMED = {
    "speech16": ("speech16.pt", "16-bit lossless speech (pcm16, logistic mixture on a predictor cascade); "
                                "the default of txl-audio compress"),
    "speech8": ("speech8.pt", "8-bit mu-law speech, for evaluate / generate / context out of the box"),
}
DEFAULT_CODEC_MODEL = "speech16"


def named_path(name: str) -> Path | None:
    """The checkpoint file of a named model, or None when ``name`` is not one."""
    entry = NAMED.get(str(name))
    return None if entry is None else FOLDER / entry[0]


def export(checkpoint: str | Path, out: str | Path, **info) -> dict:
    """Write the parts of a training checkpoint a named model needs (float32 weights, config,
    tokenizer, the corpus's figures, ``info`` such as the recipe and its numbers) to ``out``; returns
    what it wrote without the weights, with the model id the codec records."""
    import torch

    from txl_audio.checkpoint import load_checkpoint, load_model, save_checkpoint
    from txl_audio.codec import ID_BYTES, model_hash

    state = load_checkpoint(checkpoint)
    keep = {"model": {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()},
            "config": state["config"], "tokenizer": state["tokenizer"], "step": state.get("step", 0)}
    if "corpus_stats" in state:
        keep["corpus_stats"] = state["corpus_stats"]
    keep["info"] = dict(info)
    save_checkpoint(out, keep)
    Path(out).chmod(0o644)  # a package file, readable by everyone
    model, _, _ = load_model(out, torch.device("cpu"))
    meta = {"file": str(out), "bytes": Path(out).stat().st_size, "step": keep["step"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "model_id": bytes.fromhex(model_hash(model))[:ID_BYTES].hex(), **keep["info"]}
    return meta


__all__ = ["DEFAULT_CODEC_MODEL", "NAMED", "export", "named_path"]
