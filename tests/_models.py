"""Small models shared by the evaluation and context tests."""

from __future__ import annotations

import torch

from txl_audio.config import ModelConfig
from txl_audio.model import TransformerXL


def sharp_model(vocab=16, mem_len=16, tgt_len=8, attention="relative", seed=0, **kw) -> TransformerXL:
    """A tiny model with large random weights, so its predictions depend strongly on the context (at the
    usual 0.02 init every context gives nearly the uniform distribution and equivalence tests are weak)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab,
        n_layer=2,
        d_model=32,
        n_head=2,
        d_head=16,
        d_inner=64,
        dropout=0.0,
        tgt_len=tgt_len,
        mem_len=mem_len,
        attention=attention,
        **kw,
    )
    model = TransformerXL(cfg)
    # uniform with standard deviation 0.4 from integers: torch's normal_ takes a vectorised path whose
    # last bits depend on the CPU (ATEN_CPU_CAPABILITY), and these weights feed stored references
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or name.endswith(("u", "v")):
                k = torch.randint(-(2**20), 2**20, p.shape, generator=g, dtype=torch.int64)
                p.copy_((k.double() + 0.5) * (0.4 * 3**0.5 / 2**20))
    return model.eval()
