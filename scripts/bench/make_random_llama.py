#!/usr/bin/env python3
"""Writes a random-weight llama model (Hugging Face layout, f16 or bf16 safetensors shards +
index), by default of about 1.5B parameters, to show that microllm's memory stays bounded as
models grow; scripts/bench/llama2-7b-shape.sh uses it for LLaMA-2-7B's exact shapes.

Pure standard library: random bytes are mapped onto f16 / bf16 values of magnitude
2^-7..2^-4 (a weight-like scale, never NaN or infinite, so activations stay finite) by a byte
translation table on each value's high byte, so gigabytes are written in seconds. Norm
weights are 1.0. No tokenizer: the caller copies one in.

Usage: make_random_llama.py OUT_DIR [--layers 30] [--hidden 2048] [--intermediate 5632]
       [--heads 32] [--kv-heads 4] [--vocab 49152] [--shard-gb 2] [--dtype f16|bf16]
       [--max-position 2048]
"""
import argparse
import json
import os
import struct

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=30)
p.add_argument("--hidden", type=int, default=2048)
p.add_argument("--intermediate", type=int, default=5632)
p.add_argument("--heads", type=int, default=32)
p.add_argument("--kv-heads", type=int, default=4)
p.add_argument("--vocab", type=int, default=49152)
p.add_argument("--shard-gb", type=float, default=2.0)
p.add_argument("--dtype", choices=["f16", "bf16"], default="f16")
p.add_argument("--max-position", type=int, default=2048)
a = p.parse_args()

h, i, hd = a.hidden, a.intermediate, a.hidden // a.heads
kv = a.kv_heads * hd
tensors = [("model.embed_tokens.weight", [a.vocab, h])]
for l in range(a.layers):
    pre = f"model.layers.{l}"
    tensors += [
        (f"{pre}.input_layernorm.weight", [h]),
        (f"{pre}.self_attn.q_proj.weight", [h, h]),
        (f"{pre}.self_attn.k_proj.weight", [kv, h]),
        (f"{pre}.self_attn.v_proj.weight", [kv, h]),
        (f"{pre}.self_attn.o_proj.weight", [h, h]),
        (f"{pre}.post_attention_layernorm.weight", [h]),
        (f"{pre}.mlp.gate_proj.weight", [i, h]),
        (f"{pre}.mlp.up_proj.weight", [i, h]),
        (f"{pre}.mlp.down_proj.weight", [h, i]),
    ]
tensors += [("model.norm.weight", [h]), ("lm_head.weight", [a.vocab, h])]

if a.dtype == "f16":
    # High byte: keep the sign and the top mantissa bits, force exponent 8..11.
    table = bytes(((b & 0x83) | ((8 + (b >> 2) % 4) << 2)) for b in range(256))
    one = struct.pack("<e", 1.0)
else:
    # bf16 high byte: sign and the top 7 exponent bits; 0x3C / 0x3D with the low byte's top
    # bit give biased exponents 120..123, i.e. 2^-7..2^-4.
    table = bytes(((b & 0x80) | 0x3C | ((b >> 1) & 1)) for b in range(256))
    one = struct.pack("<f", 1.0)[2:]
st_dtype = {"f16": "F16", "bf16": "BF16"}[a.dtype]

shards, current, size = [], [], 0
limit = int(a.shard_gb * 1e9)
for name, shape in tensors:
    n = 1
    for d in shape:
        n *= d
    if current and size + 2 * n > limit:
        shards.append(current)
        current, size = [], 0
    current.append((name, shape, n))
    size += 2 * n
shards.append(current)

os.makedirs(a.out, exist_ok=True)
weight_map = {}
total = 0
for k, shard in enumerate(shards):
    fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    header, offset = {}, 0
    for name, shape, n in shard:
        header[name] = {"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + 2 * n]}
        offset += 2 * n
        weight_map[name] = fname
        total += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(os.path.join(a.out, fname), "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape, n in shard:
            if name.endswith("norm.weight"):
                f.write(one * n)
                continue
            left = 2 * n
            while left:
                chunk = min(left, 1 << 26)
                buf = bytearray(os.urandom(chunk))
                buf[1::2] = bytes(buf[1::2]).translate(table)
                f.write(buf)
                left -= chunk
with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 2 * total}, "weight_map": weight_map}, f, indent=1)
config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
    "intermediate_size": i, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
    "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab, "max_position_embeddings": a.max_position,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
    "tie_word_embeddings": False, "torch_dtype": {"f16": "float16", "bf16": "bfloat16"}[a.dtype], "bos_token_id": 1, "eos_token_id": 2,
}
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
print(f"{total / 1e9:.2f}B parameters in {len(shards)} shards, {2 * total / 1e9:.1f} GB")
