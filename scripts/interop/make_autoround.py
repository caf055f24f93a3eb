"""Quantizes a Hugging Face model directory with AutoRound (the real tool, on CPU) and saves its
`auto_gptq` export (or, with `-awq`, its `auto_awq` export: AutoAWQ's GEMM layout; with `-ar`,
its own `auto_round` export), as its users do: checkpoints microllm must read (issue 20).

Variant (--variant): BITS-GROUP-SYM[-awq|-ar], e.g. `4-32-asym`, `4-32-asym-awq`, `4-32-sym-ar`
(`-ar`: AutoRound's own `auto_round` export, quant_method `auto-round`: GPTQ's layout
(`packing_format: auto_round:auto_gptq`) for symmetric schemes, AutoAWQ's GEMM layout
(`auto_round:auto_awq`) for 4-bit asymmetric ones). AutoRound runs with `iters=0`, its
round-to-nearest mode (the sign-gradient tuning takes hours on 2 cores); the export layout is
the same either way. Calibration: --samples windows of --seqlen tokens of CALIB_TEXT.

Usage: python make_autoround.py SRC_DIR CALIB_TEXT OUT_DIR --variant V [--samples 32]
"""
import glob
import os
import shutil
import time

import torch
from calib_windows import maker_args, windows


def main():
    a = maker_args("variant")
    torch.set_num_threads(2)
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bits, group, sym, *fmt = a.variant.split("-")
    export = {"awq": "auto_awq", "ar": "auto_round"}.get(fmt[0] if fmt else "", "auto_gptq")
    rows = windows(a.src, a.calib, a.samples, a.seqlen)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.src, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.src)
    ar = AutoRound(
        model,
        tok,
        bits=int(bits),
        group_size=int(group),
        sym=sym == "sym",
        iters=0,
        dataset=[torch.tensor(r) for r in rows],
        nsamples=a.samples,
        seqlen=a.seqlen,
        # 0.15's optimized RTN fails to cache block inputs from a list of 1-D token tensors
        # in symmetric schemes (IndexError in calibration/llm.py); those run plain RTN.
        disable_opt_rtn=sym == "sym",
    )
    tmp = a.out + ".tmp"
    ar.quantize_and_save(tmp, format=export)
    # AutoRound nests the export as TMP/<model>-w<bits>g<group>/auto-gptq (or TMP itself).
    found = glob.glob(f"{tmp}/**/config.json", recursive=True)
    shutil.move(os.path.dirname(found[0]), a.out)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"AutoRound {a.variant}: quantize + save {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
