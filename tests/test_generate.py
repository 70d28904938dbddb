"""Generation: token choice (top-k / top-p / temperature), cached decoding against the reference path,
reproducibility, a tiny model continuing a periodic waveform, and the command's output files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from txl_audio.generate import draw, filter_logits

# a fixed distribution over 10 tokens with distinct probabilities (no ties at any cut)
PROBS = torch.tensor([0.30, 0.02, 0.20, 0.01, 0.15, 0.12, 0.08, 0.05, 0.04, 0.03])
LOGITS = PROBS.log()


def allowed_set(probs: torch.Tensor, top_k: int | None, top_p: float | None) -> set[int]:
    """The tokens top-k then top-p may emit, written out by hand from the definitions."""
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    if top_k is not None:
        order = order[:top_k]
    if top_p is not None:
        total = sum(float(probs[i]) for i in order)
        kept, mass = [], 0.0
        for i in order:
            kept.append(i)
            mass += float(probs[i]) / total
            if mass >= top_p - 1e-12:
                break
        order = kept
    return set(order)


@pytest.mark.parametrize(
    "top_k, top_p, expected",
    [
        (3, None, {0, 2, 4}),
        (None, 0.5, {0, 2}),  # 0.30 + 0.20 reaches 0.5
        (None, 0.51, {0, 2, 4}),
        (None, 0.05, {0}),  # the most probable token always stays
        (4, 0.7, {0, 2, 4}),  # renormalized over the top 4 (0.77): 0.30+0.20+0.15 = 0.65/0.77 >= 0.7
        (1, 0.99, {0}),
        (None, 1.0, set(range(10))),
        (20, None, set(range(10))),
    ],
)
def test_filter_logits_keeps_exactly_the_allowed_set(top_k, top_p, expected):
    assert allowed_set(PROBS, top_k, top_p) == expected  # the hand-written definition agrees
    out = filter_logits(LOGITS.unsqueeze(0), top_k, top_p)[0]
    kept = set(torch.nonzero(torch.isfinite(out)).flatten().tolist())
    assert kept == expected
    # survivors keep their logits unchanged
    assert torch.equal(out[sorted(kept)], LOGITS[sorted(kept)])


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.6), (5, 0.8), (None, None)])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_sampler_never_leaves_the_allowed_set_and_matches_the_distribution(top_k, top_p, temperature):
    n = 40_000
    logits = LOGITS.expand(n, -1)
    scaled = torch.softmax(LOGITS / temperature, -1)
    allowed = allowed_set(scaled, top_k, top_p)
    g = torch.Generator().manual_seed(0)
    tokens = draw(logits, temperature, top_k, top_p, generator=g)
    assert set(tokens.unique().tolist()) <= allowed
    # the frequencies follow the renormalized distribution (5 sigma)
    target = torch.zeros(10)
    target[sorted(allowed)] = scaled[sorted(allowed)]
    target /= target.sum()
    freq = torch.bincount(tokens, minlength=10).double() / n
    sigma = (target * (1 - target) / n).sqrt().double()
    assert torch.all((freq - target.double()).abs() <= 5 * sigma + 1e-9), (freq, target)


def test_greedy_is_argmax_and_ignores_the_filters():
    logits = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draw(logits, 0.0, top_k=5, top_p=0.3), logits.argmax(-1))


def test_same_generator_seed_same_draws_different_seed_different():
    logits = torch.randn(8, 256)
    a = draw(logits.expand(100, 8, 256).reshape(800, 256), 1.0, generator=torch.Generator().manual_seed(3))
    b = draw(logits.expand(100, 8, 256).reshape(800, 256), 1.0, generator=torch.Generator().manual_seed(3))
    c = draw(logits.expand(100, 8, 256).reshape(800, 256), 1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bad_sampling_arguments_are_clear_errors():
    from txl_audio.generate import check_sampling_args

    with pytest.raises(ValueError, match="temperature"):
        check_sampling_args(-1.0, None, None)
    with pytest.raises(ValueError, match="top_k"):
        check_sampling_args(1.0, 0, None)
    with pytest.raises(ValueError, match="top_p"):
        check_sampling_args(1.0, None, 1.5)
    assert math.isfinite(float(filter_logits(LOGITS, None, None).sum()))


# ----------------------------------------------------------------------------------------------------
# with a model


def tiny_config(**kw):
    from txl_audio.config import ModelConfig

    d = dict(vocab_size=32, n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, dropout=0.0,
             tgt_len=4, mem_len=6, init_std=0.5)
    d.update(kw)
    return ModelConfig(**d)


def tiny_model(seed: int = 0, **kw):
    from txl_audio.model import TransformerXL

    torch.manual_seed(seed)
    model = TransformerXL(tiny_config(**kw)).eval()
    with torch.no_grad():  # random, well-spread logits: greedy choices are far from ties
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize(
    "config, prompt_len",
    [
        (dict(mem_len=6, tgt_len=4), 7),
        (dict(mem_len=6, tgt_len=4), 0),
        (dict(mem_len=3, tgt_len=5), 12),  # memory shorter than a segment; prompt of whole segments
        (dict(mem_len=0, tgt_len=4), 5),  # no memory: a plain segment model
        (dict(mem_len=6, tgt_len=4, same_length=True, clamp_len=3, pre_norm=True), 9),
        (dict(mem_len=0, tgt_len=6, attention="absolute"), 3),
        (dict(mem_len=6, tgt_len=4, attention="rotary"), 7),
        (dict(mem_len=3, tgt_len=5, same_length=True, attention="rotary", rotary_fraction=0.5), 12),
        (dict(mem_len=4, tgt_len=4, cmem_len=3, cmem_ratio=2), 7),  # compressive memory
        (dict(mem_len=4, tgt_len=4, cmem_len=2, cmem_ratio=4, attention="rotary", cmem_fn="conv"), 12),
    ],
)
def test_greedy_cached_equals_reference_past_the_window(config, prompt_len):
    from txl_audio.generate import sample

    model = tiny_model(**config)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 32, (3, prompt_len), generator=g) if prompt_len else None
    n_new = 3 * (config["mem_len"] + config["tgt_len"]) + 3  # the window slides several times
    kw = dict(batch_size=3, start_token=5)
    cached = sample(model, prompt, n_new, temperature=0.0, decoder="cached", **kw)
    reference = sample(model, prompt, n_new, temperature=0.0, use_cache=False, **kw)
    assert cached.shape == (3, n_new)
    assert torch.equal(cached, reference)


@pytest.mark.parametrize("attn", ["relative", "rotary", "compressive"])
def test_decoders_give_the_reference_logits_token_by_token(attn):
    from txl_audio.decoders import make_decoder

    if attn == "compressive":
        model = tiny_model(mem_len=4, tgt_len=2, init_std=0.05, cmem_len=3, cmem_ratio=2)
    else:
        model = tiny_model(mem_len=5, tgt_len=3, init_std=0.05, attention=attn)
    T = model.config.tgt_len
    tokens = torch.randint(0, 32, (2, 40), generator=torch.Generator().manual_seed(1))
    logits = {}
    with torch.inference_mode():
        for kind in ("reference", "cached"):
            dec = make_decoder(model, 2, kind)
            out = [dec.prefill(tokens[:, :7]).logits]
            out += [dec.step(tokens[:, i]).logits.clone() for i in range(7, 40)]
            logits[kind] = torch.stack(out, 1)  # (B, 34, V)
    # and the whole stream through forward() segment by segment with memory (evaluation's view)
    full, mems = [], None
    with torch.inference_mode():
        for s in range(0, 40, T):
            o = model(tokens[:, s : s + T], mems=mems)
            full.append(o.logits)
            mems = o.mems
    full = torch.cat(full, 1)[:, 6:]
    for kind in ("reference", "cached"):
        torch.testing.assert_close(logits[kind], full, atol=1e-5, rtol=1e-5, msg=kind)


def test_sampled_cached_equals_reference_with_the_same_seed():
    from txl_audio.generate import sample

    model = tiny_model(mem_len=5, tgt_len=3)
    prompt = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(1))
    a = sample(model, prompt, 40, 1.0, top_k=20, generator=torch.Generator().manual_seed(7))
    b = sample(model, prompt, 40, 1.0, top_k=20, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(a, b)
    assert len(torch.unique(a)) > 5


def test_same_seed_same_tokens_different_seed_different():
    from txl_audio.generate import sample

    model = tiny_model()
    runs = [sample(model, None, 60, 1.0, top_p=0.95, generator=torch.Generator().manual_seed(s), batch_size=2)
            for s in (11, 11, 12)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0][0], runs[0][1])  # streams of one batch differ from each other


def test_prompt_given_as_one_row_is_shared_by_the_batch():
    from txl_audio.generate import sample

    model = tiny_model()
    prompt = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(2))
    out = sample(model, prompt, 12, 0.0, batch_size=4)
    assert out.shape == (4, 12) and all(torch.equal(out[0], r) for r in out)
    with pytest.raises(ValueError, match="prompt tokens"):
        sample(model, torch.tensor([[0, 99]]), 3)


# ----------------------------------------------------------------------------------------------------
# a tiny model that learns a periodic waveform continues it

PERIOD = 40


def periodic_wave(n: int, phase: int = 0) -> np.ndarray:
    t = np.arange(n) + phase
    wave = 0.6 * np.sin(2 * np.pi * t / PERIOD) + 0.25 * np.sin(6 * np.pi * t / PERIOD + 1.0)
    return wave.astype(np.float32)


def train_periodic_model(steps: int, seed: int = 0):
    """A 2-layer model trained on random-phase crops, two segments per crop so memory is used."""
    from txl_audio.model import TransformerXL
    from txl_audio.tokenizers import MuLawTokenizer

    tok = MuLawTokenizer(8)
    torch.manual_seed(seed)
    cfg = tiny_config(vocab_size=256, d_model=64, n_head=2, d_head=32, d_inner=128, tgt_len=32, mem_len=32,
                      init_std=0.02)
    model = TransformerXL(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    codes = torch.from_numpy(tok.encode(periodic_wave(4096 + 65)).astype(np.int64))
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, 4096, size=16)
        batch = torch.stack([codes[s : s + 65] for s in starts])  # (B, 65)
        x, y = batch[:, :-1], batch[:, 1:]
        mems, loss = None, 0.0
        for s in (0, 32):
            out = model(x[:, s : s + 32], mems=mems, targets=y[:, s : s + 32])
            mems, loss = out.mems, loss + out.loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok, float(loss.detach()) / 2


def test_tiny_model_continues_a_periodic_waveform():
    from txl_audio.generate import sample

    model, tok, loss = train_periodic_model(steps=150)
    prompt_len, n_new = 100, 300
    truth = periodic_wave(prompt_len + n_new, phase=13)
    prompt = torch.from_numpy(tok.encode(truth[:prompt_len]).astype(np.int64)).unsqueeze(0)
    new = sample(model, prompt, n_new, temperature=0.0)
    wave = tok.decode(new[0].numpy())
    corr = float(np.corrcoef(wave, truth[prompt_len:])[0, 1])
    assert corr > 0.9, f"correlation {corr:.3f} with the true continuation (training loss {loss:.3f} nats)"
    # sampling at a low temperature stays on the waveform too
    new = sample(model, prompt, n_new, temperature=0.3, generator=torch.Generator().manual_seed(0))
    assert float(np.corrcoef(tok.decode(new[0].numpy()), truth[prompt_len:])[0, 1]) > 0.9


# ----------------------------------------------------------------------------------------------------
# the command's files


def write_checkpoint(path, model, tokenizer):
    from txl_audio.checkpoint import save_checkpoint
    from txl_audio.config import RunConfig

    state = {"model": model.state_dict(), "config": RunConfig(model=model.config).to_dict(),
             "tokenizer": tokenizer.to_dict(), "step": 0}
    save_checkpoint(path, state)
    return path


def test_generate_command_writes_16khz_mono_clips_prompt_first(tmp_path):
    import soundfile as sf

    from txl_audio.cli import main
    from txl_audio.tokenizers import MuLawTokenizer

    tok = MuLawTokenizer(8)
    write_checkpoint(tmp_path / "ckpt_000010.pt", tiny_model(vocab_size=256), tok)
    # an 8 kHz stereo prompt: resampled to 16 kHz and mixed to mono before tokenizing
    t = np.arange(8000) / 8000
    prompt = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1)
    sf.write(tmp_path / "prompt.wav", prompt, 8000)
    out = tmp_path / "gen"
    args = ["generate", str(tmp_path), "--out", str(out), "--seconds", "0.02", "--num", "3",
            "--batch-size", "2", "--prompt", str(tmp_path / "prompt.wav"), "--prompt-seconds", "0.01",
            "--device", "cpu", "--seed", "5", "--top-k", "50"]
    assert main(args) == 0
    report = json.loads((out / "generation.json").read_text())
    assert report["prompt_boundary_seconds"] == pytest.approx(0.01)
    assert report["samples_per_second"] > 0 and report["torch_version"] == torch.__version__
    assert report["checkpoint"].endswith("ckpt_000010.pt")
    assert report["settings"]["top_k"] == 50
    from txl_audio.audio import load_audio

    expected_prompt = tok.decode(tok.encode(load_audio(tmp_path / "prompt.wav")[:160]))
    waves = []
    for i in range(3):
        info = sf.info(out / f"sample_{i:03d}.wav")
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, 160 + 320)
        assert (out / f"sample_{i:03d}.png").stat().st_size > 1000
        wave, _ = sf.read(out / f"sample_{i:03d}.wav", dtype="float32")
        np.testing.assert_allclose(wave[:160], expected_prompt, atol=1 / 32768 + 1e-6)
        waves.append(wave)
    assert not np.array_equal(waves[0][160:], waves[1][160:])
    # the same seed gives the same audio
    assert main(args[:3] + [str(tmp_path / "again")] + args[4:]) == 0
    for i in range(3):
        again, _ = sf.read(tmp_path / "again" / f"sample_{i:03d}.wav", dtype="float32")
        np.testing.assert_array_equal(again, waves[i])


def test_generate_command_unconditional_and_errors(tmp_path, capsys):
    import soundfile as sf

    from txl_audio.cli import main
    from txl_audio.tokenizers import MuLawTokenizer

    ckpt = write_checkpoint(tmp_path / "m.pt", tiny_model(vocab_size=256), MuLawTokenizer(8))
    assert main(["generate", str(ckpt), "--out", str(tmp_path / "u"), "--seconds", "0.01", "--num", "1",
                 "--device", "cpu", "--no-plots"]) == 0
    assert sf.info(tmp_path / "u" / "sample_000.wav").frames == 160
    report = json.loads((tmp_path / "u" / "generation.json").read_text())
    assert report["prompt_boundary_seconds"] == 0 and report["settings"]["start_token"] == 128
    assert main(["generate", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 1
    assert "missing.pt" in capsys.readouterr().err
    assert main(["generate", str(ckpt), "--out", str(tmp_path / "x"), "--temperature", "-1"]) == 1
    assert "temperature" in capsys.readouterr().err


def test_generate_command_on_a_word_model_with_adaptive_softmax_writes_text(tmp_path, capsys):
    """A PTB/WikiText-style checkpoint (word vocabulary, adaptive input and softmax) generates text into
    .txt files; cached decoding equals the reference with the adaptive output layer too."""
    from txl_audio.cli import main
    from txl_audio.generate import sample
    from txl_audio.tokenizers import WordTokenizer

    words = [f"w{i}" for i in range(58)]
    tok = WordTokenizer(["<unk>", "<eos>", *words])
    model = tiny_model(vocab_size=60, cutoffs=[10, 30], div_val=2)
    prompt = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample(model, prompt, 25, 0.0), sample(model, prompt, 25, 0.0, use_cache=False))
    ckpt = write_checkpoint(tmp_path / "ptb.pt", model, tok)
    (tmp_path / "prompt.txt").write_text("w3 w4 w5\nw6 unknownword\n")
    out = tmp_path / "gen"
    assert main(["generate", str(ckpt), "--out", str(out), "--tokens", "30", "--num", "3",
                 "--batch-size", "2", "--prompt", str(tmp_path / "prompt.txt"), "--device", "cpu",
                 "--seed", "1"]) == 0
    assert "tokens/s" in capsys.readouterr().out
    report = json.loads((out / "generation.json").read_text())
    assert report["unit"] == "word" and report["new_tokens_per_sample"] == 30
    texts = [(out / f"sample_{i:03d}.txt").read_text() for i in range(3)]
    for text in texts:
        assert text.startswith("w3 w4 w5\nw6 <unk>\n")  # the prompt as the model read it
        new = text[len("w3 w4 w5\nw6 <unk>\n"):]
        assert len(new.split()) + new.count("\n") == 30  # 30 tokens: words and line ends
        assert set(new.split()) <= set(tok.itos)
    assert len(set(texts)) > 1
    assert not list(out.glob("*.wav"))
    # unconditional: starts after a line end; a byte-level model writes characters
    from txl_audio.tokenizers import ByteTokenizer

    ckpt = write_checkpoint(tmp_path / "bytes.pt", tiny_model(vocab_size=256), ByteTokenizer())
    assert main(["generate", str(ckpt), "--out", str(tmp_path / "b"), "--num", "1", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "b" / "generation.json").read_text())
    assert report["settings"]["start_token"] == ord("\n") and report["new_tokens_per_sample"] == 200
    assert len((tmp_path / "b" / "sample_000.txt").read_bytes()) >= 1


# ----------------------------------------------------------------------------------------------------
# GPU (run with -m cuda on a machine with one)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def exact_fp32_matmul():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


CUDA_GRAPH_CASES = [dict(mem_len=6, tgt_len=4), dict(mem_len=4, tgt_len=4, cmem_len=3, cmem_ratio=2)]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("kw", CUDA_GRAPH_CASES, ids=["plain", "compressive"])
def test_cuda_graph_decoding_equals_reference_on_gpu(exact_fp32_matmul, kw):
    """The graph replays the one-token step; a compressive model's compression at segment boundaries
    runs outside it (CachedDecoder.step), at the same positions."""
    from txl_audio.generate import sample

    model = tiny_model(**kw).cuda()
    prompt = torch.randint(0, 32, (3, 7), generator=torch.Generator().manual_seed(0)).cuda()
    graph = sample(model, prompt, 50, 0.0, decoder="cached")  # CUDA graph by default on CUDA
    eager = sample(model, prompt, 50, 0.0, decoder="cached", cuda_graph=False)
    reference = sample(model, prompt, 50, 0.0, use_cache=False)
    assert torch.equal(graph, reference) and torch.equal(eager, reference)
    a = sample(model, prompt, 50, 1.0, top_p=0.9, generator=torch.Generator("cuda").manual_seed(3))
    b = sample(model, prompt, 50, 1.0, top_p=0.9, generator=torch.Generator("cuda").manual_seed(3),
               cuda_graph=False)
    assert torch.equal(a, b)


@pytest.mark.cuda
@needs_cuda
def test_generate_command_bf16_on_gpu(tmp_path):
    import soundfile as sf

    from txl_audio.generate import generate_files
    from txl_audio.tokenizers import MuLawTokenizer

    ckpt = write_checkpoint(tmp_path / "m.pt", tiny_model(vocab_size=256, mem_len=64, tgt_len=32),
                            MuLawTokenizer(8))
    report = generate_files(str(ckpt), str(tmp_path / "g"), seconds=0.1, num=4, batch_size=4, device="cuda",
                            dtype="bf16", plots=False)
    assert report["settings"]["dtype"] == "bf16" and "cpu" not in report["device_name"]
    for i in range(4):
        assert sf.info(tmp_path / "g" / f"sample_{i:03d}.wav").frames == 1600
