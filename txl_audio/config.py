"""Configuration as data: one frozen dataclass per concern, TOML files, typed dotted overrides.

Every checkpoint stores ``asdict(config)``; ``ModelConfig(**d)`` rebuilds it. Configs are frozen: the
architecture a checkpoint was trained with never changes under it. What may differ per call (how
much memory and how long a segment evaluation or decoding uses) is a :class:`Lengths` value passed to
the model (``model(tokens, memory, lengths=...)``, ``model.init_cache(..., lengths=...)``); derive
one from the trained values with :meth:`ModelConfig.lengths`.

Every value is checked against its field's type when a config is made (from TOML, ``--set``, a
checkpoint or Python): an int is accepted for a float, nothing else is coerced, and a bad value is a
:class:`ConfigError` naming the key, the value and the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from txl_audio.errors import TxlAudioError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


HEADS = ("softmax", "dual_softmax", "logistic_mixture")
ATTENTIONS = ("relative", "rotary", "absolute")
CMEM_FNS = ("mean", "conv")


def _check_cmem_lengths(mem_len: int, tgt_len: int, ratio: int, prefix: str) -> None:
    """A compressed slot summarises cmem_ratio consecutive stream positions, aligned on multiples of
    it; states leave the memory a segment at a time, so both lengths must be multiples of the ratio."""
    if mem_len % ratio or tgt_len % ratio:
        raise ConfigError(f"{prefix}mem_len ({mem_len}) and {prefix}tgt_len ({tgt_len}) must be multiples of "
                          f"model.cmem_ratio ({ratio}) with a compressed memory")


class ConfigError(TxlAudioError, ValueError):
    """A config value, key or file that cannot be used; the message names it (the command exits 2)."""


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of integers"
    return _TYPE_NAMES.get(hint, str(hint))


def _check_value(hint: Any, value: Any) -> tuple[bool, Any]:
    """(value fits hint, value normalised): ints become floats for float fields, lists tuples."""
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if typing.get_origin(hint) is tuple:  # tuple[int, ...]
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
        return ok, tuple(value) if ok else value
    raise TypeError(f"config field type {hint!r} is not supported")  # pragma: no cover


def _shown(value: Any) -> str:
    """A value as TOML / --set would write it (true, "text", [1, 2])."""
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


class _Typed:
    """Checks every field against its type hint after __init__ (see the module docstring)."""

    SECTION = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            ok, value = _check_value(hints[f.name], value)
            if not ok:
                raise ConfigError(f"{self.SECTION}.{f.name}={_shown(value)}: expected "
                                  f"{_type_name(hints[f.name])}, got {type(value).__name__}")
            object.__setattr__(self, f.name, value)  # frozen: the normalised value


@dataclass(frozen=True)
class Lengths:
    """How much context one call of the model reads; may differ from training in evaluation and decoding.

    ``tgt_len``: tokens per segment (forward pass); ``mem_len``: hidden states carried to the next
    segment (a prediction attends to up to mem_len + tgt_len tokens); ``clamp_len``: relative distances
    beyond it share one embedding (-1 = off); ``same_length``: every query attends over the same
    number of keys (at most mem_len)."""

    mem_len: int
    tgt_len: int
    clamp_len: int = -1
    same_length: bool = False
    cmem_len: int = 0  # compressed memory slots (compressive models; 0 = none)

    def __post_init__(self) -> None:
        if self.mem_len < 0 or self.tgt_len <= 0 or self.cmem_len < 0:
            raise ValueError(f"lengths need mem_len >= 0, tgt_len > 0 and cmem_len >= 0, got "
                             f"mem_len={self.mem_len}, tgt_len={self.tgt_len}, cmem_len={self.cmem_len}")


@dataclass(frozen=True)
class ModelConfig(_Typed):
    """Transformer-XL hyper-parameters (names follow Dai et al. 2019): a frozen dataclass of typed
    fields (``ModelConfig(vocab_size=256, n_layer=4, ...)``; a value of the wrong type is a ConfigError
    naming the key). ``config.lengths(mem_len, tgt_len, ...)`` returns the :class:`Lengths` an evaluation
    or decoder uses (the trained values by default)."""

    SECTION = "model"

    vocab_size: int = 256
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    d_head: int = 64
    d_inner: int = 1024
    dropout: float = 0.1
    dropatt: float = 0.0
    tgt_len: int = 512  # segment length (tokens predicted per forward pass)
    mem_len: int = 512  # cached hidden states carried to the next segment
    clamp_len: int = -1  # relative distances beyond this use the same embedding; -1 = off
    same_length: bool = False  # every query attends over the same number of keys
    pre_norm: bool = False  # LayerNorm before each sublayer (the paper is post-norm)
    tie_weights: bool = True  # output projection shares the input embedding
    # "relative" (the paper's), "rotary" (RoFormer's rotary positions over memory + segment: no
    # position bias, fused attention kernels) or "absolute" (vanilla Transformer, mem_len = 0)
    attention: str = "relative"
    # rotary only: the base of the rotation frequencies, theta_i = base^(-2i/r) (10,000: Su et al. 2021,
    # RoFormer, eq. 15) and the share of each head's dimensions rotated, r = the even number nearest
    # below fraction x d_head (1.0: RoFormer rotates all; GPT-NeoX, Black et al. 2022, rotates 0.25)
    rotary_base: float = 10_000.0
    rotary_fraction: float = 1.0
    # compressive memory (Rae et al. 2020): states leaving the memory are compressed, cmem_ratio of them
    # into one slot, into a second memory of cmem_len slots that attention also reads (0 = off: the
    # plain Transformer-XL). cmem_fn: "mean" (pooling, no parameters) or "conv" (a strided 1-D
    # convolution per layer, trained only by the attention-reconstruction loss, weighted cmem_loss_weight)
    cmem_len: int = 0
    cmem_ratio: int = 4
    cmem_fn: str = "mean"
    cmem_loss_weight: float = 1.0
    cutoffs: tuple[int, ...] = ()  # adaptive softmax/input cluster cutoffs; () = full softmax
    div_val: int = 1  # adaptive embedding size divisor per cluster
    init_std: float = 0.02
    # the output distribution: "softmax" over the vocabulary (8-bit codes, text; also 65,536-way for
    # 16-bit), or for 16-bit PCM (vocab_size 65,536) "dual_softmax" (coarse and fine byte, WaveRNN) or
    # "logistic_mixture" (a discretized mixture of logistics, PixelCNN++); see model/heads.py
    head: str = "softmax"
    mixture_components: int = 10  # logistic_mixture: K
    lp_order: int = 0  # 16-bit heads: order of the linear-prediction prior the head is centred on; 0 = none
    # the prior: "network" (coefficients predicted from the hidden state), "fitted" (fitted causally on
    # the past samples, the backward-adaptive LPC of the baselines, plus the network's correction) or
    # "cascade" (a sample-adaptive predictor cascade, model/prior.py, whose prediction, residual scale and
    # recent errors are also the network's inputs; its parameters in ``cascade``)
    lp_coefficients: str = "network"
    # lp_coefficients = "cascade": the cascade's parameters as JSON (CascadeConfig; "" = its defaults,
    # written out in full when the config is made, so a checkpoint records them)
    cascade: str = ""
    lp_aux_weight: float = 1.0  # weight of the prior's Laplace likelihood in the training loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"model.attention must be one of {', '.join(ATTENTIONS)}, "
                              f"got {self.attention!r}")
        if self.attention == "rotary":
            if not 0.0 < self.rotary_fraction <= 1.0 or self.rotary_dims < 2:
                raise ConfigError(f"model.rotary_fraction={self.rotary_fraction} must be in (0, 1] and "
                                  f"rotate at least 2 of the d_head={self.d_head} dimensions")
            if self.rotary_base <= 1.0:
                raise ConfigError(f"model.rotary_base must be > 1, got {self.rotary_base}")
            if self.clamp_len >= 0:
                raise ConfigError("model.clamp_len clamps the relative attention's distance embeddings; "
                                  "rotary positions have none: leave it at -1")
        if self.attention == "absolute" and self.mem_len != 0:
            raise ConfigError(
                "model.attention='absolute' is the vanilla Transformer baseline and has no recurrence "
                f"memory: set model.mem_len=0 (got {self.mem_len})"
            )
        if self.cmem_len < 0 or self.cmem_ratio < 1:
            raise ConfigError(f"model.cmem_len must be >= 0 and model.cmem_ratio >= 1, got {self.cmem_len} "
                              f"and {self.cmem_ratio}")
        if self.cmem_fn not in CMEM_FNS:
            raise ConfigError(f"model.cmem_fn must be one of {', '.join(CMEM_FNS)}, got {self.cmem_fn!r}")
        if self.cmem_len and self.attention == "absolute":
            raise ConfigError("model.cmem_len: the absolute-position baseline has no memory to compress")
        if self.cmem_len:
            _check_cmem_lengths(self.mem_len, self.tgt_len, self.cmem_ratio, "model.")
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "d_head", "d_inner", "tgt_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.mem_len < 0:
            raise ConfigError(f"model.mem_len must be >= 0, got {self.mem_len}")
        if self.head not in HEADS:
            raise ConfigError(f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head != "softmax" and self.vocab_size != 65_536:
            raise ConfigError(f"model.head={self.head!r} models 16-bit PCM: it needs model.vocab_size=65536 "
                              f"(a pcm16 corpus), got {self.vocab_size}")
        if self.head != "softmax" and self.cutoffs:
            raise ConfigError("model.cutoffs (adaptive softmax) goes with model.head='softmax' only")
        if self.lp_order < 0 or (self.lp_order and self.head == "softmax"):
            raise ConfigError(f"model.lp_order={self.lp_order}: the linear-prediction prior is for the "
                              "16-bit heads (dual_softmax, logistic_mixture) and must be >= 0")
        if self.lp_coefficients not in ("network", "fitted", "cascade"):
            raise ConfigError("model.lp_coefficients must be 'network', 'fitted' or 'cascade', got "
                              f"{self.lp_coefficients!r}")
        if self.lp_coefficients == "cascade" and self.lp_order:
            from txl_audio.model.prior import CascadeConfig

            try:
                cc = CascadeConfig.from_dict(json.loads(self.cascade)) if self.cascade else CascadeConfig()
            except (ValueError, TypeError) as e:
                raise ConfigError(f"model.cascade={self.cascade!r}: {e}") from None
            object.__setattr__(self, "cascade", json.dumps(cc.to_dict(), sort_keys=True))
        elif self.cascade:
            raise ConfigError("model.cascade sets the cascade prior's parameters: it needs "
                              "model.lp_coefficients='cascade' and model.lp_order > 0")
        if self.mixture_components < 1:
            raise ConfigError(f"model.mixture_components must be positive, got {self.mixture_components}")

    @property
    def rotary_dims(self) -> int:
        """Dimensions of each head rotated by the rotary positions (even)."""
        return int(self.d_head * self.rotary_fraction) // 2 * 2

    def lengths(
        self,
        mem_len: int | None = None,
        tgt_len: int | None = None,
        clamp_len: int | None = None,
        same_length: bool | None = None,
        cmem_len: int | None = None,
    ) -> Lengths:
        """The trained lengths with the given ones replaced (None keeps the trained value), checked
        against what this architecture can do."""
        new = Lengths(
            self.mem_len if mem_len is None else int(mem_len),
            self.tgt_len if tgt_len is None else int(tgt_len),
            self.clamp_len if clamp_len is None else int(clamp_len),
            self.same_length if same_length is None else bool(same_length),
            self.cmem_len if cmem_len is None else int(cmem_len),
        )
        if new.cmem_len and not self.cmem_len:
            raise ValueError(f"cmem_len {new.cmem_len}: this model was trained without a compressed memory "
                             "(its compression is not defined): evaluate it with cmem_len 0")
        if new.cmem_len:
            _check_cmem_lengths(new.mem_len, new.tgt_len, self.cmem_ratio, "--")
        if self.attention == "rotary" and new.clamp_len >= 0:
            raise ValueError(f"clamp_len {new.clamp_len}: rotary positions have no distance embeddings to "
                             "clamp (clamp_len is for attention = 'relative')")
        if self.attention == "absolute":
            if new.mem_len != 0:
                raise ValueError(
                    "this is the absolute-position baseline: it has no recurrence memory and can only be "
                    f"evaluated with mem_len 0 (got --mem-len {new.mem_len})"
                )
            if new.tgt_len > self.tgt_len:
                raise ValueError(
                    f"the absolute-position baseline learned positions 0..{self.tgt_len - 1} only: "
                    f"evaluate it with --tgt-len <= {self.tgt_len} (got {new.tgt_len})"
                )
        return new


@dataclass(frozen=True)
class DataConfig(_Typed):
    """Where the prepared corpus is and how it is streamed."""

    SECTION = "data"

    corpus: str = "runs/demo/corpus"  # a folder written by prepare-audio / prepare-text
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    eval_batch_size: int = 8
    max_eval_tokens: int = 0  # cap on validation tokens per evaluation (0 = whole split)


@dataclass(frozen=True)
class TrainConfig(_Typed):
    """Optimisation and run control."""

    SECTION = "train"

    seed: int = 0
    batch_size: int = 8  # streams per step (global, over all processes)
    grad_accum: int = 1
    lr: float = 2.5e-4
    min_lr: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 1000
    max_time: float = 0.0  # seconds of training before stopping cleanly (0 = no limit)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    clip: float = 0.25
    log_every: int = 10
    eval_every: int = 200
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    max_bad_steps: int = 10  # stop after this many non-finite losses in a row
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    tensorboard: bool = False
    threads: int = 0  # CPU threads per process (0 = all cores, shared among local processes)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: ``model`` (:class:`ModelConfig`), ``data`` (:class:`DataConfig`) and ``train``
    (:class:`TrainConfig`). ``to_dict()`` / ``RunConfig.from_dict(d)`` convert to and from the plain
    dict stored in checkpoints; :func:`load_config` reads one from TOML with overrides."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        unknown = set(d) - {"model", "data", "train"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)}; expected model, data, train")
        return cls(
            model=_build(ModelConfig, d.get("model", {}), "model"),
            data=_build(DataConfig, d.get("data", {}), "data"),
            train=_build(TrainConfig, d.get("train", {}), "train"),
        )

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """A new config with ``section.key=value`` strings applied (checked like ``--set``)."""
        return RunConfig.from_dict(apply_overrides(self.to_dict(), overrides))


def _build(cls, d: dict[str, Any], section: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {sorted(unknown)}; known: {sorted(names)}")
    return cls(**d)


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (``3``, ``2.5e-4``, ``true``, ``[1, 2]``, ``"x"``);
    anything TOML cannot read is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested config dict (a copy is returned)."""
    out = json.loads(json.dumps(d))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must be section.key, e.g. model.n_layer")
        section, name = parts
        out.setdefault(section, {})[name] = parse_value(value.strip())
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or the defaults, without ``path``), apply ``overrides``
    (``["model.n_layer=2", ...]``), validate; returns a :class:`RunConfig`. Any problem is a
    ConfigError naming the file, key or value."""
    d: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    return RunConfig.from_dict(apply_overrides(d, overrides or []))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # TOML basic string: escape quote, backslash and control characters; write the rest as UTF-8
        # (json.dumps would write astral characters as surrogate-pair escapes, which TOML rejects)
        return '"' + "".join(
            c if c not in '"\\' and c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in v
        ) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(d: dict[str, dict[str, Any]]) -> str:
    """Write a two-level dict (sections of scalars and lists) as TOML."""
    lines = []
    for section, values in d.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dump_toml(config.to_dict()), encoding="utf-8")
