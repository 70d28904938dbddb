"""Make tests/data/cmem_off_reference.pt with the code from before the compressive memory existed: the
plain model's forward and one-token step outputs in float64 and the losses of four fp32 training steps,
for tests/test_cmem.py::test_cmem_off_is_the_plain_model_bit_for_bit.

    git worktree add /tmp/precmem cfe4aec^
    cd /tmp/precmem && PYTHONPATH=/tmp/precmem python /path/to/this/file.py /tmp/ref.pt
"""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd() / "tests"))
from _models import sharp_model
from _training import make_corpus, tiny_config

from txl_audio.train import train


def segments(model, x, T):
    mems, out = None, []
    for s in range(0, x.shape[1], T):
        o = model(x[:, s : s + T], mems=mems)
        mems = o.mems
        out.append(o.logits)
    return torch.cat(out, 1)


def stepped(model, x):
    cache = model.init_cache(x.shape[0])
    return torch.cat([model.step(x[:, t : t + 1], cache).logits for t in range(x.shape[1])], 1)


def plain(attention, corpus, out):
    torch.set_num_threads(1)
    model = sharp_model(vocab=16, mem_len=8, tgt_len=4, attention=attention).double()
    x = torch.randint(0, 16, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        forward = segments(model, x, 4)
        step = stepped(model, x)
    r = train(
        tiny_config(corpus, model={"attention": attention}, max_steps=4),
        out,
        progress=False,
        log=lambda m: None,
    )
    return {"forward": forward, "step": step, "losses": torch.tensor(r.losses, dtype=torch.float64)}


with tempfile.TemporaryDirectory() as d:
    ref = {a: plain(a, make_corpus(Path(d) / f"c_{a}"), Path(d) / f"run_{a}") for a in ["relative", "rotary"]}
torch.save(ref, sys.argv[1])
for a in ref:
    for k, v in ref[a].items():
        print(a, k, v.dtype, float(v.abs().max()))
