"""The package's exceptions: one base class, :class:`TxlAudioError`, for every error that reports a
user's mistake (a bad file, checkpoint, config value or argument) with a message naming the thing.

The specific classes keep the built-in type they had before (``AudioError``, ``CheckpointError``,
``ConfigError``, ``CodecError``, ``CorpusError``, ``PrepareError`` and :class:`ArgumentValueError` are
``ValueError``s; :class:`ArgumentTypeError` is a ``TypeError``; ``DeviceError`` is both a
``ValueError`` and a ``RuntimeError``), so ``except ValueError`` keeps working, and
``except txl_audio.TxlAudioError`` catches them all:

- :class:`txl_audio.audio.AudioError`: a file or array that cannot be used as audio (missing,
  unreadable, not audio, NaN samples, mis-scaled);
- :class:`txl_audio.checkpoint.CheckpointError`: a missing, unreadable or mismatched checkpoint;
- :class:`txl_audio.config.ConfigError`: a bad config file, key or value;
- :class:`txl_audio.codec.CodecError`: a file that cannot be compressed or decompressed;
- :class:`txl_audio.data.CorpusError`, :class:`txl_audio.prepare.PrepareError`: corpora;
- :class:`txl_audio.devices.DeviceError`: a device name that is not one, or CUDA where there is none;
- :class:`ArgumentTypeError`: an argument of the wrong type (``model.score(123)``);
- :class:`ArgumentValueError`: an argument of the right type and a value the function cannot use
  (``model.generate(seconds=-1)``).

The command line prints the same messages (``txl-audio CMD: error: ...``). Some checks deep in the
library still raise a plain ``ValueError`` with a message meant for the user; ``except ValueError``
catches those too.

This module imports nothing, so every other module (and ``import txl_audio``) can use it for free.
"""

from __future__ import annotations


class TxlAudioError(Exception):
    """Base class of the errors txl_audio raises for a user's mistake; the message names the file,
    argument or value, says what was wrong and, where it can, what to do."""


class ArgumentTypeError(TxlAudioError, TypeError):
    """An argument of a type the function does not take; the message names the argument, the type it
    got and the types it takes."""


class ArgumentValueError(TxlAudioError, ValueError):
    """An argument whose value the function cannot use; the message names the argument, the value and
    what it takes."""


def type_error(name: str, value: object, expected: str) -> ArgumentTypeError:
    """An :class:`ArgumentTypeError` for argument ``name``: ``value``'s type is not ``expected``."""
    return ArgumentTypeError(f"{name} must be {expected}, got {type(value).__name__} {_short(value)}")


def value_error(name: str, value: object, expected: str) -> ArgumentValueError:
    """An :class:`ArgumentValueError` for argument ``name``: ``value`` is not ``expected``."""
    return ArgumentValueError(f"{name} must be {expected}, got {_short(value)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
