"""What the peers' makers share (make_llmc.py, make_gptqmodel.py, make_autoround.py): their
command line, and the calibration windows the tools are given: `samples` consecutive,
non-overlapping windows of `seqlen` tokens from the start of a text, tokenized with the model
directory's tokenizer.json, no special tokens.
"""
import argparse

from tokenizers import Tokenizer


def maker_args(choice):
    """`SRC_DIR CALIB_TEXT OUT_DIR --CHOICE NAME [--samples 32] [--seqlen 512]`, parsed."""
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("calib")
    ap.add_argument("out")
    ap.add_argument(f"--{choice}", required=True)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    return ap.parse_args()


def windows(model_dir, text_path, samples, seqlen):
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    ids = tok.encode(open(text_path, encoding="utf-8").read(), add_special_tokens=False).ids
    assert len(ids) >= samples * seqlen, f"calibration text too short: {len(ids)} tokens"
    return [ids[i * seqlen : (i + 1) * seqlen] for i in range(samples)]
