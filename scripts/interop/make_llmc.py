"""Quantizes a Hugging Face model directory with llm-compressor (the real tool, on CPU) and
saves it compressed, as its users do: the checkpoints microllm must read (issue 20).

Schemes (--scheme):
  gptq-w4g32     GPTQ, 4-bit symmetric groups of 32 (llm-compressor's default actorder "static")
  awq-w4g64      AWQ, 4-bit asymmetric groups of 64 (SmolLM2's 576 inputs take no group of 128)
  w8a8-int8      SmoothQuant 0.8 + GPTQ W8A8 int8 (int-quantized, per-token int8 activations)
  fp8-dynamic    FP8_DYNAMIC: FP8 weights per channel, per-token FP8 activations, no calibration
  fp8-block      FP8_BLOCK: FP8 weights with one scale per 128 x 128 block, FP8 activations
                 per token and group of 128 columns, no calibration
  mixed          two config groups, `mixed-precision`: attention FP8 weights per channel
                 (naive-quantized), MLP 4-bit symmetric groups of 32 (pack-quantized), by
                 regex targets; round-to-nearest, no calibration

Calibration: --samples windows of --seqlen tokens from the start of CALIB_TEXT, tokenized with
the model's tokenizer.json (no special tokens), consecutive and non-overlapping.

Usage: python make_llmc.py SRC_DIR CALIB_TEXT OUT_DIR --scheme S [--samples 32] [--seqlen 512]
"""
import shutil
import time

import torch
from calib_windows import maker_args, windows
from datasets import Dataset
from transformers import AutoModelForCausalLM


def recipe(scheme):
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    def groups(bits, group, symmetric):
        return {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": bits,
                    "type": "int",
                    "symmetric": symmetric,
                    "strategy": "group",
                    "group_size": group,
                },
            }
        }

    if scheme == "gptq-w4g32":
        return GPTQModifier(config_groups=groups(4, 32, True), ignore=["lm_head"])
    if scheme == "awq-w4g64":
        return AWQModifier(config_groups=groups(4, 64, False), ignore=["lm_head"])
    if scheme == "w8a8-int8":
        return [
            SmoothQuantModifier(smoothing_strength=0.8),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
        ]
    if scheme == "mixed":
        mlp = groups(4, 32, True)["group_0"]
        mlp["targets"] = ["re:.*mlp\\..*_proj$"]
        attn = {
            "targets": ["re:.*self_attn\\..*_proj$"],
            "weights": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"},
        }
        return QuantizationModifier(config_groups={"attn": attn, "mlp": mlp}, ignore=["lm_head"])
    if scheme == "fp8-dynamic":
        return QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])
    if scheme == "fp8-block":
        return QuantizationModifier(targets="Linear", scheme="FP8_BLOCK", ignore=["lm_head"])
    raise SystemExit(f"unknown scheme {scheme}")


def main():
    a = maker_args("scheme")
    torch.set_num_threads(2)
    if not torch.cuda.is_available():
        # llm-compressor 0.14's AWQ pins its cached activations (`Tensor.pin_memory`), which
        # needs a CUDA driver; pinning only speeds host-to-GPU copies, so on a CPU it is
        # made the identity.
        torch.Tensor.pin_memory = lambda self, *a, **k: self
    from llmcompressor import oneshot

    rows = windows(a.src, a.calib, a.samples, a.seqlen)
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * a.seqlen] * a.samples})
    model = AutoModelForCausalLM.from_pretrained(a.src, dtype=torch.float32)
    t0 = time.time()
    kwargs = {}
    if a.scheme not in ("fp8-dynamic", "mixed"):
        kwargs = dict(dataset=ds, max_seq_length=a.seqlen, num_calibration_samples=a.samples)
    oneshot(model=model, recipe=recipe(a.scheme), **kwargs)
    model.save_pretrained(a.out, save_compressed=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{a.src}/{f}", f"{a.out}/{f}")
    print(f"llm-compressor {a.scheme}: oneshot + save {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
