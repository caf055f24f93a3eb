"""Perplexity of a model directory in transformers (compressed-tensors checkpoints run as
their config says, activation quantization included), on a token-id file, with microllm's
default protocol: consecutive windows of --ctx tokens of the id stream, every position after
the first of each window scored. `microllm eval --data IDS --ctx C --max-windows W` scores the
same tokens, so the two figures compare directly.

With --library-decompress BASE_DIR (a pack-quantized checkpoint transformers cannot load:
transformers 5.24 + compressed-tensors 0.20 refuse every asymmetric one, llm-compressor's own
included, with a zero-point shape mismatch), the model is BASE_DIR's architecture holding the
checkpoint's tensors, each packed linear decompressed by the compressed-tensors library's own
`PackedQuantizationCompressor.decompress`.

Usage: python ppl_transformers.py MODEL_DIR IDS.safetensors [--ctx 512] [--windows 8]
                                  [--library-decompress BASE_DIR]
Prints `PPL <perplexity> <scored tokens>`.
"""
import argparse
import glob
import json
import math

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("ids")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--library-decompress", metavar="BASE_DIR", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    stream = load_file(a.ids)["input_ids"].reshape(-1)
    windows = min(a.windows, stream.numel() // a.ctx)
    if a.library_decompress:
        model = library_decompressed(a.model_dir, a.library_decompress)
    else:
        model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = stream[w * a.ctx : (w + 1) * a.ctx].unsqueeze(0)
            logits = model(x).logits[0].double()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            nll -= logp.gather(1, x[0, 1:].unsqueeze(1)).sum().item()
            n += a.ctx - 1
    print(f"PPL {math.exp(nll / n):.6f} {n}")


def library_decompressed(ct_dir, base_dir):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    qc = json.load(open(f"{ct_dir}/config.json"))["quantization_config"]
    weights = QuantizationArgs(**qc["config_groups"]["group_0"]["weights"])
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    tensors = {}
    for f in sorted(glob.glob(f"{ct_dir}/*.safetensors")):
        tensors.update(load_file(f))
    state = {}
    for p in sorted(k[: -len(".weight_packed")] for k in tensors if k.endswith(".weight_packed")):
        sd = {k[len(p) + 1 :]: tensors.pop(k) for k in list(tensors) if k.startswith(p + ".")}
        sd["weight_scale"] = sd["weight_scale"].float()
        state[p + ".weight"] = PackedQuantizationCompressor.decompress(sd, scheme)["weight"].float()
    state.update({k: v.float() for k, v in tensors.items()})
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    missing = model.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    return model


if __name__ == "__main__":
    main()
