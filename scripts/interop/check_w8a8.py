"""Runs a W8A8 compressed-tensors checkpoint (`int-quantized`, or FP8 `float-quantized`) as its
config says, with the compressed-tensors library's own quantization code, and compares the
logits with `microllm logits` on the same token ids.

transformers (5.24, compressed-tensors 0.20) loads such a checkpoint but does not run its
activation quantization on CPU: with the default `run_compressed=True` the 8-bit weights land
undecompressed in plain `Linear` layers, with `run_compressed=False` they are decompressed and the
inputs left in float. So the weights come from transformers' decompression and every block
linear's input goes through compressed-tensors' dynamic per-token quantization
(`compute_dynamic_scales_and_zp` + `fake_quantize`, the library's serving semantics) in a
forward pre-hook; `lm_head`, in the config's `ignore` list, is left alone.

Rounding activations to 8 bits (int8 or FP8 E4M3) makes the logits of a deep model sensitive to the last bit of
every product: a value that lands on the other side of a rounding boundary moves by a whole
step, and the difference grows block by block. The same library computing the same checkpoint
in float64 instead of float32 disagrees with itself by as much (SmolLM2: mean |d logit| 0.41,
top-1 93%). So the control is that run: microllm passes when it agrees with the library's
float32 run at least as well as the library's float64 run does (top-1 within 2 points, mean
difference within 1.25x), and the first block's output, before any flip can compound, is
not compared here (microllm takes no hidden states as input); it agreed to 1e-6 when checked
by hand on SmolLM2 (docs/interop-results.md).

Usage: python check_w8a8.py MODEL_DIR IDS.safetensors MICROLLM_LOGITS.safetensors [--name N]
Prints `RESULT <name> compressed-tensors-w8a8 ...`; exit 0 on PASS.
"""
import argparse
import json
import sys

import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("ids")
    ap.add_argument("logits")
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    name = a.name or a.model_dir
    torch.set_num_threads(2)
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    qc = json.load(open(f"{a.model_dir}/config.json"))["quantization_config"]
    group = qc["config_groups"]["group_0"]
    args = QuantizationArgs(**group["input_activations"])
    ignore = set(qc.get("ignore") or [])
    def quantize_input(module, inputs):
        (x,) = inputs
        scale, zp = compute_dynamic_scales_and_zp(value=x, args=args, module=module)
        return (fake_quantize(x=x, scale=scale, zero_point=zp, args=args),)

    def served(dtype):
        model = AutoModelForCausalLM.from_pretrained(
            a.model_dir,
            dtype=torch.float32,
            quantization_config=CompressedTensorsConfig(run_compressed=False),
        ).to(dtype)
        hooked = 0
        for mod_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and mod_name not in ignore:
                module.register_forward_pre_hook(quantize_input)
                hooked += 1
        with torch.no_grad():
            return model(ids).logits.float(), hooked

    def agreement(x, y):
        return (x - y).abs().mean().item(), (x.argmax(-1) == y.argmax(-1)).float().mean().item()

    ids = load_file(a.ids)["input_ids"]
    ours = load_file(a.logits)["logits"].float()
    theirs, hooked = served(torch.float32)
    control, _ = served(torch.float64)
    mean, top1 = agreement(ours, theirs)
    control_mean, control_top1 = agreement(control, theirs)
    ok = top1 >= control_top1 - 0.02 and mean <= 1.25 * control_mean
    print(
        f"details {name}: {hooked} linears with per-token {args.type} inputs ({args.strategy}, "
        f"dynamic={args.dynamic}); control (library float64 vs float32): mean abs diff "
        f"{control_mean:.3g}, top-1 {100 * control_top1:.2f}%",
        file=sys.stderr,
    )
    print(
        f"RESULT {name} compressed-tensors-w8a8 loaded=yes mean_abs={mean:.3g} "
        f"top1={100 * top1:.2f}% control_mean_abs={control_mean:.3g} "
        f"control_top1={100 * control_top1:.2f}% n={ours.shape[0] * ours.shape[1]} "
        f"{'PASS' if ok else 'FAIL'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
