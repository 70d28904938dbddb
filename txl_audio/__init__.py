"""txl_audio: sample-level audio (and text) language modelling with Transformer-XL.

From Python::

    import txl_audio
    model = txl_audio.load("runs/demo")          # a checkpoint file or run folder -> txl_audio.Model
    score = model.score("clip.flac")             # per-sample NLL in bits, totals, settings
    audio = model.generate(seconds=1, seed=0)    # (1, 16000) float32 at 16 kHz

The exports (``__all__``) are loaded on first use (PEP 562 module ``__getattr__``): ``import txl_audio``
imports neither torch nor numpy, so ``txl_audio.__version__`` and the ``txl-audio`` command's parser
stay fast (``import torch`` alone takes about a second), and the first access to, say,
``txl_audio.load`` imports what it needs. ``dir(txl_audio)`` lists them all.

Errors: every mistake of the caller's (a missing checkpoint, an unreadable audio file, an argument of
the wrong type, a bad config value) raises a subclass of :class:`TxlAudioError` whose message names the
thing; see :mod:`txl_audio.errors`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def _compile_cache_per_cpu_capability() -> None:
    """Give ``torch.compile`` a cache folder of its own per ``ATEN_CPU_CAPABILITY``.

    Inductor keeps its C++ kernels and precompiled headers in one folder whatever the capability, so
    a header made under this CPU's own (AVX-512 here) breaks compiling under
    ``ATEN_CPU_CAPABILITY=default`` afterwards ("'at::vec' has not been declared", torch 2.13): a run
    that imitates another CPU fails after one that did not. Where the capability is set and the user
    has not chosen ``TORCHINDUCTOR_CACHE_DIR``, the cache goes to inductor's usual folder plus
    ``cpu-<capability>``. At import, because importing torch's compiler fixes the folder."""
    import os

    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if not cap or "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    import getpass
    import tempfile

    try:
        user = getpass.getuser()
    except Exception:  # no user name (containers): inductor's own fallback
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}",
                                                         f"cpu-{cap}")


_compile_cache_per_cpu_capability()


def _onednn_isa_matching_capability() -> None:
    """Where ``ATEN_CPU_CAPABILITY`` imitates a CPU without AVX-512 and ``ONEDNN_MAX_CPU_ISA`` is not set,
    cap oneDNN's instruction set to match, as such a CPU would report.

    Otherwise torch mixes the two: on a machine with AMX, its CPU flash attention asks the hardware
    (through oneDNN) whether bf16 blocks can be packed, is told yes, and then calls the packing of the
    imitated capability's kernels, which has none: "pack_vnni2 is only supported when avx512 is
    supported" in a bf16 step (torch 2.13). A real CPU of that class never gets there."""
    import os

    isa = {"default": "SSE41", "avx2": "AVX2"}.get(os.environ.get("ATEN_CPU_CAPABILITY", "").lower())
    if isa and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        os.environ["ONEDNN_MAX_CPU_ISA"] = isa


_onednn_isa_matching_capability()

# public name -> the module that defines it
_EXPORTS = {
    # the Python API (txl_audio/api.py)
    "load": "txl_audio.api",
    "Model": "txl_audio.api",
    "Score": "txl_audio.api",
    # building blocks
    "TransformerXL": "txl_audio.model",
    "ModelConfig": "txl_audio.config",
    "RunConfig": "txl_audio.config",
    "load_config": "txl_audio.config",
    "MuLawTokenizer": "txl_audio.tokenizers",
    "LinearTokenizer": "txl_audio.tokenizers",
    "ByteTokenizer": "txl_audio.tokenizers",
    "WordTokenizer": "txl_audio.tokenizers",
    "make_tokenizer": "txl_audio.tokenizers",
    "load_audio": "txl_audio.audio",
    "save_audio": "txl_audio.audio",
    "prepare_audio": "txl_audio.prepare",
    # the training module, callable as its train(config, out_dir): a package attribute named like a
    # submodule becomes the submodule once anything imports it, so a function export would be replaced
    # depending on import order; the callable module is the same object in every order
    "train": "txl_audio.train",
    # errors
    "TxlAudioError": "txl_audio.errors",
    "ArgumentTypeError": "txl_audio.errors",
    "ArgumentValueError": "txl_audio.errors",
    "DeviceError": "txl_audio.devices",
    "AudioError": "txl_audio.audio",
    "CheckpointError": "txl_audio.checkpoint",
    "ConfigError": "txl_audio.config",
    "CodecError": "txl_audio.codec",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load an export on first access (PEP 562) and keep it in the package namespace."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'txl_audio' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module == f"{__name__}.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
