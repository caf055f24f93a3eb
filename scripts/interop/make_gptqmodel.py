"""Quantizes a Hugging Face model directory with GPTQModel (the real tool, on CPU) and saves
the GPTQ checkpoint, as its users do: the checkpoints microllm must read (issue 20).

Variants (--variant): BITS-GROUP-SYM[-act][-v2], e.g. `4-32-asym-act-v2` (4 bits, groups of
32, asymmetric, desc_act (activation order, g_idx stored), checkpoint_format gptq_v2) or
`8-128-sym` (v1, GPTQModel's default format). GPTQModel quantizes true-sequentially.

Calibration: --samples windows of --seqlen tokens from the start of CALIB_TEXT, tokenized with
the model's tokenizer.json (no special tokens).

Usage: python make_gptqmodel.py SRC_DIR CALIB_TEXT OUT_DIR --variant V [--samples 32]
"""
import os
import shutil
import time

# GPTQModel 7.7 sizes its CPU pool to half the cores and then asks for a 2-worker loader pool
# inside it, which fails on a 2-core machine ("requests 2 workers but parent 'cpu' only has 1").
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch
from calib_windows import maker_args, windows


def main():
    a = maker_args("variant")
    # GPTQModel writes its quantization log under ./logs: beside the output, not in the checkout.
    a.src, a.calib, a.out = (os.path.abspath(p) for p in (a.src, a.calib, a.out))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    os.chdir(os.path.dirname(a.out))
    torch.set_num_threads(2)
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization.config import FORMAT

    parts = a.variant.split("-")
    bits, group, sym = int(parts[0]), int(parts[1]), parts[2] == "sym"
    act, v2 = "act" in parts[3:], "v2" in parts[3:]
    qc = QuantizeConfig(
        bits=bits,
        group_size=group,
        sym=sym,
        desc_act=act,
        true_sequential=True,
        format=FORMAT.GPTQ_V2 if v2 else FORMAT.GPTQ,
        device="cpu",
    )
    calib = [
        {"input_ids": row, "attention_mask": [1] * a.seqlen}
        for row in windows(a.src, a.calib, a.samples, a.seqlen)
    ]
    t0 = time.time()
    model = GPTQModel.load(a.src, qc)
    model.quantize(calib, batch_size=1)
    model.save(a.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{a.src}/{f}", f"{a.out}/{f}")
    print(f"GPTQModel {a.variant}: load + quantize + save {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
