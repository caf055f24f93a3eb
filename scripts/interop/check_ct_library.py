"""Proves a microllm compressed-tensors checkpoint with the compressed-tensors library itself,
below transformers' loader: its `PackedQuantizationCompressor.decompress` (the code transformers
calls to dequantize pack-quantized weights) is run on our tensors and the result is compared
with microllm's own f32 reading of the same checkpoint (`microllm convert --dtype f32`); its
`compress` is run on microllm's weights, scales and zero points and must give our packed tensors
bit for bit. With --ids/--logits, the decompressed weights are also put into transformers'
LlamaForCausalLM and its logits compared with `microllm logits` on the checkpoint.

Usage: python check_ct_library.py CT_DIR F32_DIR [--name N] [--ids IDS --logits LOGITS]
act-order (`actorder: "group"`, `weight_g_idx`): compressed-tensors >= 0.20 rejects it
("actorder='group' has been removed"); the check then unpacks with the library's
`unpack_from_int32` and applies g_idx itself (w = scale[:, g_idx] * (q - zp[:, g_idx])).
Prints `RESULT <name> compressed-tensors-library ...`.
"""
import argparse
import glob
import json
import sys

import torch
from safetensors.torch import load_file


def load_dir(d):
    out = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        out.update(load_file(f))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ct_dir")
    ap.add_argument("f32_dir")
    ap.add_argument("--name", default=None)
    ap.add_argument("--ids", default=None)
    ap.add_argument("--logits", default=None)
    a = ap.parse_args()
    name = a.name or a.ct_dir
    torch.set_num_threads(2)
    import compressed_tensors
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor as PQ
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    qc = json.load(open(f"{a.ct_dir}/config.json"))["quantization_config"]
    wargs = dict(qc["config_groups"]["group_0"]["weights"])
    actorder = wargs.get("actorder")
    if actorder == "group":
        try:
            QuantizationArgs(**wargs)
            note = "actorder=group accepted"
        except Exception as e:
            note = f"library rejects actorder=group ({str(e).splitlines()[-2].strip()[:90]})"
        wargs["actorder"] = None
    else:
        note = ""
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**wargs))
    bits = scheme.weights.num_bits
    ct = load_dir(a.ct_dir)
    ref = load_dir(a.f32_dir)
    prefixes = sorted(k[: -len(".weight_packed")] for k in ct if k.endswith(".weight_packed"))
    max_w = 0.0
    n_diff = 0
    n = 0
    repack_ok = True
    deq = {}
    for p in prefixes:
        sd = {k[len(p) + 1 :]: v for k, v in ct.items() if k.startswith(p + ".")}
        w_ref = ref[p + ".weight"].float()
        g_idx = sd.pop("weight_g_idx", None)
        if g_idx is None:
            # scales in f32, as transformers passes them when loading with dtype=float32 (in f16
            # the library's product is rounded to f16)
            w = PQ.decompress({**sd, "weight_scale": sd["weight_scale"].float()}, scheme)["weight"].float()
        else:  # the library no longer takes g_idx: unpack with it, apply g_idx here
            shape = torch.Size(sd["weight_shape"].tolist())
            q = unpack_from_int32(sd["weight_packed"], bits, shape).float()
            s = sd["weight_scale"].float()
            zp = (
                unpack_from_int32(sd["weight_zero_point"], bits, (shape[0], s.shape[1]), packed_dim=0).float()
                if "weight_zero_point" in sd
                else torch.zeros_like(s)
            )
            gi = g_idx.long()
            w = s[:, gi] * (q - zp[:, gi])
        d = (w - w_ref).abs()
        max_w = max(max_w, d.max().item())
        n_diff += int((d > 0).sum())
        n += d.numel()
        deq[p + ".weight"] = w
        if g_idx is None:
            # re-pack microllm's weights with the library and compare bytes
            s = sd["weight_scale"]
            zp = None
            if "weight_zero_point" in sd:
                zp = unpack_from_int32(sd["weight_zero_point"], bits, s.shape, packed_dim=0)
            st = {"weight": w_ref, "weight_scale": s.float()}
            if zp is not None:
                st["weight_zero_point"] = zp
            out = PQ.compress(st, scheme)
            if not torch.equal(out["weight_packed"], sd["weight_packed"]):
                repack_ok = False
            if zp is not None and not torch.equal(out["weight_zero_point"], sd["weight_zero_point"]):
                repack_ok = False
    repack = "n/a (g_idx)" if actorder == "group" else ("identical" if repack_ok else "DIFFERENT")
    logit_part = ""
    if a.ids and a.logits:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(a.f32_dir, dtype=torch.float32).eval()
        r = model.load_state_dict(deq, strict=False)
        assert not r.unexpected_keys, r.unexpected_keys
        ids = load_file(a.ids)["input_ids"]
        ours = load_file(a.logits)["logits"].float()
        with torch.no_grad():
            theirs = model(ids).logits.float()
        top1 = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
        logit_part = f" logits(transformers with library-decompressed weights): max_abs={(theirs - ours).abs().max().item():.4g} top1={top1 * 100:.2f}%"
    ok = n_diff == 0 and repack != "DIFFERENT"
    print(
        f"details {name}: compressed-tensors {compressed_tensors.__version__}, {len(prefixes)} packed linears, "
        f"bits={bits} strategy={wargs.get('strategy')} group_size={wargs.get('group_size')} "
        f"symmetric={wargs.get('symmetric')} actorder={actorder} {note}"
    )
    print(
        f"RESULT {name} compressed-tensors-library(decompress) loaded=yes max_abs_weight={max_w:.3g} "
        f"differing_weights={n_diff}/{n} repack={repack}{logit_part} {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
