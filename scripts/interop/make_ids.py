"""Writes the fixed token ids every check uses: ROWS x LEN tokens of wiki text, tokenized by
the model's own tokenizer (tokenizer.json of a microllm output directory), no BOS.

Usage: python make_ids.py MODEL_DIR TEXT_FILE OUT.safetensors [--rows 4] [--len 128]
Writes an int64 `input_ids` tensor [rows, len] (the format `microllm logits --tokens` reads).
"""
import argparse

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--len", type=int, default=128)
    a = ap.parse_args()
    tok = Tokenizer.from_file(f"{a.model_dir}/tokenizer.json")
    text = open(a.text, encoding="utf-8").read()[:200_000]
    ids = tok.encode(text, add_special_tokens=False).ids
    need = a.rows * a.len
    assert len(ids) >= need, f"text too short: {len(ids)} tokens"
    # rows spread over the text, starting at fixed offsets
    stride = (len(ids) - a.len) // a.rows
    rows = [ids[r * stride : r * stride + a.len] for r in range(a.rows)]
    arr = np.array(rows, dtype=np.int64)
    save_file({"input_ids": arr}, a.out)
    print(f"wrote {a.out}: input_ids {arr.shape} from {a.text}")


if __name__ == "__main__":
    main()
