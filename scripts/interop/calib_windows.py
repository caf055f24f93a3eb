"""The calibration windows the peers' tools are given (make_llmc.py, make_gptqmodel.py):
`samples` consecutive, non-overlapping windows of `seqlen` tokens from the start of a text,
tokenized with the model directory's tokenizer.json, no special tokens.
"""
from tokenizers import Tokenizer


def windows(model_dir, text_path, samples, seqlen):
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    ids = tok.encode(open(text_path, encoding="utf-8").read(), add_special_tokens=False).ids
    assert len(ids) >= samples * seqlen, f"calibration text too short: {len(ids)} tokens"
    return [ids[i * seqlen : (i + 1) * seqlen] for i in range(samples)]
