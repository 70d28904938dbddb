"""Config as data: TOML round trips, dotted overrides with TOML typing, and errors that name the problem."""

import dataclasses
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txl_audio.config import (
    ConfigError,
    DataConfig,
    Lengths,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    dump_toml,
    load_config,
    parse_value,
    save_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_defaults_roundtrip_through_toml(tmp_path):
    cfg = RunConfig()
    assert RunConfig.from_dict(tomllib.loads(dump_toml(cfg.to_dict()))) == cfg
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg
    assert load_config(None) == cfg


def test_nondefault_values_roundtrip(tmp_path):
    cfg = RunConfig(
        model=ModelConfig(vocab_size=33278, n_layer=2, cutoffs=[2000, 10000], div_val=4, dropout=0.25,
                          attention="absolute", mem_len=0, pre_norm=True, init_std=1e-05),
        data=DataConfig(corpus='runs/a "quoted"\\path/ü', max_eval_tokens=123),
        train=TrainConfig(lr=2.5e-4, max_time=float("inf"), compile=True, device="cpu"),
    )
    path = tmp_path / "c.toml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.model.cutoffs == (2000, 10000) and isinstance(again.train.lr, float)
    # and the dict form (what checkpoints store) rebuilds the same
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@given(corpus=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
       lr=st.floats(allow_nan=False, allow_infinity=False, width=64),
       cutoffs=st.lists(st.integers(1, 10**9), max_size=4))
@settings(max_examples=100, deadline=None)
def test_roundtrip_any_string_and_number(corpus, lr, cutoffs):
    d = RunConfig(model=ModelConfig(cutoffs=cutoffs), data=DataConfig(corpus=corpus),
                  train=TrainConfig(lr=lr)).to_dict()
    again = RunConfig.from_dict(tomllib.loads(dump_toml(d)))
    assert again.data.corpus == corpus and again.train.lr == lr and again.model.cutoffs == tuple(cutoffs)


def test_overrides_are_typed_like_toml():
    d = apply_overrides({}, ["model.n_layer=3", "train.lr=3e-4", "train.compile=true",
                             "model.cutoffs=[10, 20]", 'data.corpus="runs/x y"', "data.train_split=train2",
                             "train.device = cuda"])
    assert d == {"model": {"n_layer": 3, "cutoffs": [10, 20]},
                 "train": {"lr": 3e-4, "compile": True, "device": "cuda"},
                 "data": {"corpus": "runs/x y", "train_split": "train2"}}
    cfg = RunConfig.from_dict(d)
    assert cfg.model.n_layer == 3 and cfg.train.compile is True and cfg.data.corpus == "runs/x y"
    assert cfg.model.cutoffs == (10, 20)
    assert parse_value("1") == 1 and parse_value("1.0") == 1.0 and parse_value("abc") == "abc"
    assert parse_value("a=b") == "a=b"  # not TOML: kept as text


def test_overrides_do_not_mutate_and_override_file(tmp_path):
    base = {"model": {"n_layer": 4}}
    out = apply_overrides(base, ["model.n_layer=8"])
    assert base == {"model": {"n_layer": 4}} and out == {"model": {"n_layer": 8}}
    path = tmp_path / "c.toml"
    path.write_text("[model]\nn_layer = 4\nd_model = 64\n[train]\nmax_steps = 10\n")
    cfg = load_config(path, ["model.n_layer=2", "train.max_steps=20"])
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.train.max_steps) == (2, 64, 20)


@pytest.mark.parametrize("override,message", [
    ("model.n_layer", "not of the form section.key=value"),
    ("n_layer=3", "must be section.key"),
    ("a.b.c=1", "must be section.key"),
])
def test_bad_override_form(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides({}, [override])


def test_unknown_keys_and_sections_are_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) in \[model\]: \['n_layers'\]; known: .*'n_layer'",
                       ):
        load_config(None, ["model.n_layers=3"])
    with pytest.raises(ValueError, match=r"unknown config section\(s\): \['optim'\]"):
        load_config(None, ["optim.lr=1"])


def test_validation_errors_are_clear():
    with pytest.raises(ValueError, match="model.mem_len=0"):
        load_config(None, ["model.attention=absolute"])
    with pytest.raises(ValueError, match="must be one of relative, rotary, absolute, got 'rel'"):
        load_config(None, ["model.attention=rel"])
    with pytest.raises(ValueError, match="rotary positions have none"):
        load_config(None, ["model.attention=rotary", "model.clamp_len=8"])
    with pytest.raises(ValueError, match=r"rotary_fraction=0.01 must be in \(0, 1\]"):
        load_config(None, ["model.attention=rotary", "model.rotary_fraction=0.01"])
    with pytest.raises(ValueError, match="no distance embeddings to clamp"):
        load_config(None, ["model.attention=rotary"]).model.lengths(clamp_len=4)
    with pytest.raises(ValueError, match="model.d_model must be positive, got 0"):
        load_config(None, ["model.d_model=0"])
    with pytest.raises(ValueError, match="mem_len must be >= 0"):
        load_config(None, ["model.mem_len=-1"])


def test_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ValueError, match=f"config file not found: {missing}"):
        load_config(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layer = 3\n")
    with pytest.raises(ValueError, match=f"config file {bad} is not valid TOML"):
        load_config(bad)


def test_every_field_is_written():
    text = dump_toml(RunConfig().to_dict())
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            assert f"\n{f.name} = " in text


# ---- every value is checked against its field's type ----


@pytest.mark.parametrize("override, shown", [
    ("model.n_layer=four", 'model.n_layer="four": expected an integer, got str'),
    ('train.lr="1e-3"', 'train.lr="1e-3": expected a number, got str'),
    ("model.dropout=true", "model.dropout=true: expected a number, got bool"),
    ("model.n_layer=2.5", "model.n_layer=2.5: expected an integer, got float"),
    ("train.compile=1", "train.compile=1: expected true or false, got int"),
    ("data.corpus=3", "data.corpus=3: expected a string, got int"),
    ("model.cutoffs=[10, 2.5]", "model.cutoffs=[10, 2.5]: expected a list of integers, got list"),
    ("model.cutoffs=7", "model.cutoffs=7: expected a list of integers, got int"),
])
def test_values_are_checked_against_their_field_type(override, shown):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == shown


def test_an_int_is_a_float_and_nothing_else_is_coerced(tmp_path):
    cfg = load_config(None, ["train.lr=1", "train.max_time=60", "model.cutoffs=[5, 9]"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and isinstance(cfg.train.max_time, float)
    assert cfg.model.cutoffs == (5, 9)
    path = tmp_path / "c.toml"
    path.write_text('[model]\nn_layer = "4"\n')
    with pytest.raises(ConfigError, match='model.n_layer="4": expected an integer'):
        load_config(path)
    with pytest.raises(ConfigError, match="train.seed=true: expected an integer, got bool"):
        TrainConfig(seed=True)  # the Python API is checked too


def test_configs_are_frozen_and_lengths_are_per_call():
    cfg = ModelConfig(mem_len=16, tgt_len=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mem_len = 32
    assert cfg.lengths() == Lengths(16, 8, -1, False)
    assert cfg.lengths(mem_len=64, same_length=True) == Lengths(64, 8, -1, True) and cfg.mem_len == 16
    absolute = ModelConfig(attention="absolute", mem_len=0, tgt_len=8)
    with pytest.raises(ValueError, match="no recurrence memory"):
        absolute.lengths(mem_len=4)
    with pytest.raises(ValueError, match="tgt-len <= 8"):
        absolute.lengths(tgt_len=16)
    with pytest.raises(ValueError, match="mem_len >= 0"):
        Lengths(-1, 8)


@pytest.mark.parametrize("override", ["model.n_layer=four", 'train.lr="1e-3"', "model.dropout=true"])
def test_train_command_reports_a_bad_value_in_one_line_and_writes_nothing(tmp_path, capsys, override):
    from txl_audio.cli import main

    out = tmp_path / "run"
    assert main(["train", "--config", str(save_default(tmp_path)), "--set", override, "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("txl-audio train: error: ") and "expected" in err
    assert override.split("=")[0] in err and "Traceback" not in err
    assert not out.exists()


def save_default(folder):
    path = folder / "c.toml"
    save_config(RunConfig(), path)
    return path
