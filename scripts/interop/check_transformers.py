"""Loads a microllm output directory with transformers on CPU and compares its logits with
`microllm logits` on the same token ids.

Usage: python check_transformers.py MODEL_DIR IDS.safetensors MICROLLM_LOGITS.safetensors [--name N]
- compressed-tensors directories load through transformers' compressed-tensors integration
  (the `compressed-tensors` package);
- GPTQ directories need a GPTQ backend (gptqmodel); without one, this prints the exact error
  and `loaded=no` (the layout is then proven by check_gptq_layout.py).
Prints `RESULT <name> transformers loaded=yes|no max_abs=... top1=...`; exit 0 when loaded and
top-1 agreement >= 99%.
"""
import argparse
import json
import sys
import time
import traceback

import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("ids")
    ap.add_argument("logits")
    ap.add_argument("--name", default=None)
    ap.add_argument("--min-top1", type=float, default=0.99)
    a = ap.parse_args()
    name = a.name or a.model_dir
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ids = load_file(a.ids)["input_ids"]
    ours = load_file(a.logits)["logits"].float()
    cfg = json.load(open(f"{a.model_dir}/config.json"))
    qm = (cfg.get("quantization_config") or {}).get("quant_method", "none")

    import transformers
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    try:
        kwargs = dict(dtype=torch.float32)  # CPU is the default device
        model = AutoModelForCausalLM.from_pretrained(a.model_dir, **kwargs)
        model.eval()
    except Exception as e:  # report the exact reason, e.g. no GPTQ backend
        traceback.print_exc(file=sys.stderr)
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
        print(f"RESULT {name} transformers loaded=no quant_method={qm} error={msg!r}")
        return 1
    load_s = time.time() - t0
    # What the quantized projections became inside transformers.
    q = model.model.layers[0].self_attn.q_proj
    kinds = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith("proj")})
    nparams = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        theirs = model(ids).logits.float()
    if theirs.shape != ours.shape:
        print(f"RESULT {name} transformers loaded=yes shape-mismatch theirs={tuple(theirs.shape)} ours={tuple(ours.shape)}")
        return 1
    diff = (theirs - ours).abs()
    top1 = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
    ok = top1 >= a.min_top1
    print(
        f"details {name}: transformers {transformers.__version__} {model.__class__.__name__}, "
        f"quant_method={qm}, proj modules {kinds}, q_proj {type(q).__name__}, "
        f"layers={model.config.num_hidden_layers} heads={model.config.num_attention_heads}/"
        f"{model.config.num_key_value_heads} intermediate={model.config.intermediate_size} "
        f"params={nparams if qm == 'none' else '(packed)'}, load {load_s:.1f} s, logits {tuple(theirs.shape)}, "
        f"mean abs diff {diff.mean().item():.3g}"
    )
    print(
        f"RESULT {name} transformers loaded=yes max_abs={diff.max().item():.4g} "
        f"top1={top1 * 100:.2f}% n={ids.numel()} {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
