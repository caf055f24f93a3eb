"""Loads a microllm GGUF file with llama.cpp (llama-cpp-python, CPU), evaluates fixed token
ids with logits for every position, and compares them with `microllm logits` on the same file.

Usage: python check_llama_cpp.py FILE.gguf IDS.safetensors MICROLLM_LOGITS.safetensors [--name N]
llama.cpp runs its own kernels (quantized weights times activations quantized to q8 blocks), so
small differences are expected; they are reported, and the check passes when the file loads and
top-1 agreement is at least --min-top1 (default 0.99). With --f32-dir (microllm's f32 reading of
the file) every tensor is also dequantized by llama.cpp's reference Python code (gguf-py) and must
equal microllm's reading exactly.
Prints `RESULT <name> llama.cpp loaded=yes|no max_abs=... top1=...` and the tensor type mix.
"""
import argparse
import collections
import sys
import time

import numpy as np
from safetensors.numpy import load_file


def type_mix(path):
    import gguf

    r = gguf.GGUFReader(path)
    c = collections.Counter(t.tensor_type.name for t in r.tensors)
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items()))


HF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
      "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def weights_vs_microllm(path, f32_dir):
    """Dequantizes every tensor with llama.cpp's reference Python code (gguf.quants.dequantize),
    undoes llama.cpp's q/k row permutation, and compares with microllm's f32 reading."""
    import glob

    import gguf
    from safetensors.numpy import load_file as lf

    ref = {}
    for f in glob.glob(f"{f32_dir}/*.safetensors"):
        ref.update(lf(f))
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    nh = int(r.fields[f"{arch}.attention.head_count"].contents())
    nkv = int(r.fields[f"{arch}.attention.head_count_kv"].contents())
    worst, n = 0.0, 0
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            hf = "model.norm.weight"
        elif t.name == "output.weight":
            hf = "lm_head.weight"
        elif parts[0] == "blk" and parts[2] in HF:
            hf = f"model.layers.{parts[1]}.{HF[parts[2]]}.{parts[3]}"
        else:
            continue
        if parts[-2] in ("attn_q", "attn_k"):
            heads = nh if parts[-2] == "attn_q" else nkv
            w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if hf not in ref:
            continue
        worst = max(worst, float(np.abs(w.astype(np.float32) - ref[hf]).max()))
        n += 1
    return n, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("ids")
    ap.add_argument("logits")
    ap.add_argument("--name", default=None)
    ap.add_argument("--min-top1", type=float, default=0.99)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--f32-dir", default=None, help="microllm convert --dtype f32 of the same file")
    a = ap.parse_args()
    name = a.name or a.gguf
    ids = load_file(a.ids)["input_ids"]
    ours = load_file(a.logits)["logits"].astype(np.float32)
    import llama_cpp

    t0 = time.time()
    try:
        llm = llama_cpp.Llama(
            model_path=a.gguf,
            n_ctx=max(256, ids.shape[1]),
            n_batch=ids.shape[1],
            n_ubatch=ids.shape[1],
            logits_all=True,
            n_threads=a.threads,
            n_threads_batch=a.threads,
            n_gpu_layers=0,
            seed=0,
            verbose=False,
        )
    except Exception as e:
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
        print(f"RESULT {name} llama.cpp loaded=no error={msg!r}")
        return 1
    load_s = time.time() - t0
    rows = []
    for row in ids:
        llm.reset()
        llm.eval([int(t) for t in row])
        rows.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    theirs = np.stack(rows)
    if theirs.shape != ours.shape:
        print(f"RESULT {name} llama.cpp loaded=yes shape-mismatch theirs={theirs.shape} ours={ours.shape}")
        return 1
    d = np.abs(theirs - ours)
    top1 = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    # how close are the disagreements: microllm's margin between its top-2 at those positions
    srt = np.sort(ours, axis=-1)
    margin = (srt[..., -1] - srt[..., -2])[theirs.argmax(-1) != ours.argmax(-1)]
    meta = llm.metadata
    ok = top1 >= a.min_top1
    wpart = ""
    if a.f32_dir:
        nt, worst = weights_vs_microllm(a.gguf, a.f32_dir)
        wpart = f" weights(gguf-py dequantize vs microllm, {nt} tensors): max_abs={worst:.3g}"
        ok = ok and worst == 0.0
    print(
        f"details {name}: llama-cpp-python {llama_cpp.__version__}, arch={meta.get('general.architecture')}, "
        f"n_vocab={llm.n_vocab()}, load {load_s:.1f} s, tensor types: {type_mix(a.gguf)}; "
        f"mean abs diff {d.mean():.3g}; disagreements at positions where microllm's top-2 margin is "
        f"{np.array2string(np.round(margin, 3), max_line_width=400)}"
    )
    print(
        f"RESULT {name} llama.cpp loaded=yes max_abs={d.max():.4g} top1={top1 * 100:.2f}% "
        f"n={ids.size}{wpart} {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
