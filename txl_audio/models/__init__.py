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


__all__ = ["DEFAULT_CODEC_MODEL", "NAMED", "named_path"]
