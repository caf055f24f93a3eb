"""Loads a Hugging Face directory written by `microllm convert` with transformers (CPU, f32)
and compares its logits with the ones `microllm logits` wrote for the same token ids.

Usage: python3 check_transformers.py MODEL_DIR TOKENS.safetensors MICROLLM_LOGITS.safetensors
Needs torch, transformers and safetensors (not installed by the project: a large download).
Prints the max abs difference and the top-1 agreement; exits non-zero when top-1 agreement
is below 99%.
"""

import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(model_dir, tokens_path, logits_path):
    ids = load_file(tokens_path)["input_ids"]
    ours = load_file(logits_path)["logits"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        theirs = model(ids).logits
    diff = (theirs - ours).abs().max().item()
    agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
    print(f"transformers {model.__class__.__name__}: logits {tuple(theirs.shape)}")
    print(f"max abs difference {diff:.3g}, top-1 agreement {agree:.4f}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = "The capital of France is"
    print(f"tokenizer: {text!r} -> {tok(text)['input_ids']}")
    return 0 if agree >= 0.99 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
