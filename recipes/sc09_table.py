"""The table of recipes/sc09.sh: this run's bits per sample on the SC09 test split beside the published
numbers, which are quoted (from the Mamba paper, Gu & Dao 2023, table 4), not measured here.

    python recipes/sc09_table.py RUN      # RUN: the run folder (eval_test/summary.json, best.pt)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# (model, parameters, test NLL in bits per sample) as printed in the Mamba paper's table 4 (SC09,
# autoregressive models); parameter counts only where we quote them with confidence
PUBLISHED = (("WaveNet", "4.2M", 1.925), ("SaShiMi", "-", 1.873), ("Mamba", "-", 1.852))


def parameters(run: Path) -> int:
    from txl_audio.checkpoint import load_model

    model, _, _ = load_model(run)
    return sum(p.numel() for p in model.parameters())


def table(run: Path) -> str:
    s = json.loads((run / "eval_test" / "summary.json").read_text())
    n = parameters(run)
    lines = ["| model | parameters | SC09 test bits per sample | where the number comes from |",
             "|---|---|---|---|",
             f"| Transformer-XL, this run ({run}) | {n / 1e6:.2f}M | **{s['bits_per_token']:.4f}** | "
             f"measured here: {s['files']:,} test clips, {s['tokens']:,} samples, each clip from an empty "
             f"memory, mem_len {s['mem_len']} |"]
    for name, params, bits in PUBLISHED:
        lines.append(f"| {name} | {params} | {bits:.3f} | published (Mamba paper, Gu & Dao 2023, table 4); "
                     "not measured here |")
    if s.get("xz_bits_per_token") is not None:
        lines.append(f"| xz -9e on the same codes | - | {s['xz_bits_per_token']:.4f} | measured here |")
    return "\n".join(lines)


if __name__ == "__main__":
    print()
    print(table(Path(sys.argv[1])))
