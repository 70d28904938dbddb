"""The ``txl-audio`` command itself: every subcommand is there, a broken command module fails loudly,
and the audio-tokenizer option takes the one list of names from tokenizers.py."""

import importlib
import subprocess
import sys

import pytest

import txl_audio.commands
from txl_audio.cli import COMMANDS, main
from txl_audio.tokenizers import AUDIO_TOKENIZERS


def test_help_lists_every_command_without_loading_torch():
    # `python -m txl_audio --help` works, and building the parser (what every command pays, `info`
    # and `prepare-audio` included) does not import torch: the reason commands/train.py imports
    # txl_audio.train inside run()
    code = "import sys; from txl_audio.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"
    proc = subprocess.run([sys.executable, "-m", "txl_audio", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout


def test_a_command_module_that_cannot_be_imported_fails_loudly(monkeypatch):
    # before, cli.py skipped a command whose module was missing ("not built yet"): the command
    # silently vanished from the parser. Now the ModuleNotFoundError propagates.
    monkeypatch.setitem(sys.modules, "txl_audio.commands.generate", None)  # import raises
    monkeypatch.delattr(txl_audio.commands, "generate", raising=False)
    monkeypatch.delitem(sys.modules, "txl_audio.cli")
    with pytest.raises(ModuleNotFoundError, match="txl_audio.commands.generate"):
        importlib.import_module("txl_audio.cli").build_parser()


def test_info_tokenizer_choices_are_the_audio_tokenizers(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["info", "--tokenizer", "bytes", str(tmp_path / "x.wav")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bytes'" in err and all(name in err for name in AUDIO_TOKENIZERS)
