"""The package's exceptions: one base class, :class:`TxlAudioError`, for every error that reports a
user's mistake (a bad file, checkpoint, config value or argument) with a message naming the thing.

The specific classes keep the built-in type they had before (``AudioError``, ``CheckpointError``,
``ConfigError``, ``CodecError``, ``CorpusError`` and ``PrepareError`` are ``ValueError``s;
:class:`ArgumentTypeError` is a ``TypeError``), so ``except ValueError`` keeps working, and
``except txl_audio.TxlAudioError`` catches them all:

- :class:`txl_audio.audio.AudioError`: a file or array that cannot be used as audio;
- :class:`txl_audio.checkpoint.CheckpointError`: a missing, unreadable or mismatched checkpoint;
- :class:`txl_audio.config.ConfigError`: a bad config file, key or value;
- :class:`txl_audio.codec.CodecError`: a file that cannot be compressed or decompressed;
- :class:`txl_audio.data.CorpusError`, :class:`txl_audio.prepare.PrepareError`: corpora;
- :class:`ArgumentTypeError`: an argument of the wrong type (``model.score(123)``).

This module imports nothing, so every other module (and ``import txl_audio``) can use it for free.
"""

from __future__ import annotations


class TxlAudioError(Exception):
    """Base class of the errors txl_audio raises for a user's mistake; the message names the file,
    argument or value, says what was wrong and, where it can, what to do."""


class ArgumentTypeError(TxlAudioError, TypeError):
    """An argument of a type the function does not take; the message names the argument, the type it
    got and the types it takes."""


def type_error(name: str, value: object, expected: str) -> ArgumentTypeError:
    """An :class:`ArgumentTypeError` for argument ``name``: ``value``'s type is not ``expected``."""
    return ArgumentTypeError(f"{name} must be {expected}, got {type(value).__name__} {_short(value)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
