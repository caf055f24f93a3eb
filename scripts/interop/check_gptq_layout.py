"""Proves the layout of a microllm GPTQ checkpoint by unpacking it the way the GPTQ backends do,
independently of microllm, and comparing the dequantized weights with microllm's own reading of
the same checkpoint (`microllm convert --model GPTQ_DIR --out F32_DIR --dtype f32`).

Usage: python check_gptq_layout.py GPTQ_DIR F32_DIR [--name N] [--ids IDS --logits LOGITS]

The unpacking is a re-implementation (numpy, not copied) of:
- GPTQModel 7.7.0 `PackableQuantLinear.dequantize_weight`
  (gptqmodel/nn_modules/qlinear/__init__.py): codes = (qweight >> (bits*k)) & maxq for the k-th
  code of each int32 word along the input dimension; zeros likewise along the output dimension;
  w = scales[g_idx] * (codes - zeros[g_idx]);
  applied after GPTQModel's v1 -> v2 load-time conversion `convert_gptq_v1_to_v2_format_module`
  (gptqmodel/utils/model.py), which for 4-bit int32 adds 0x11111111 to every qzeros word (a
  whole-word add: a field holding 2^bits - 1 overflows into its neighbour);
- AutoGPTQ's v1 reading (qlinear_cuda_old / exllama): unpack each zero field, mask, then add 1
  (a field holding 2^bits - 1 reads as 2^bits);
- the masked reading `(field + 1) mod 2^bits` (what microllm documents).
For each convention it reports how many weights differ from microllm's reading. A layout error
(transposed packing, wrong bit order, zero points off by one, wrong g_idx) shows up as a large
mismatch in all three; the only expected differences are the v1 overflow groups (asymmetric zero
0), which the formats cannot represent for the first two readers.
With --ids/--logits it also runs transformers on the F32_DIR model with every linear replaced by
the GPTQModel-convention weights and compares the logits with `microllm logits` on GPTQ_DIR.
Prints `RESULT <name> gptq-layout ...`; exit 0 when the masked and GPTQModel readings equal
microllm's f32 weights everywhere outside overflow groups.
"""
import argparse
import json
import sys

import numpy as np
from safetensors.numpy import load_file


def load_dir(d):
    import glob
    out = {}
    for f in sorted(glob.glob(f"{d}/*.safetensors")):
        out.update(load_file(f))
    return out


def unpack_rows(packed, bits, n):
    """int32 [n*bits/32, m] -> codes [n, m]: code k of word i is input row i*pf + k."""
    assert bits in (2, 4, 8), "3-bit unpacking is not implemented in this check"
    pf = 32 // bits
    u = packed.astype(np.uint32)
    shifts = (np.arange(pf, dtype=np.uint32) * bits)[None, :, None]
    codes = (u[:, None, :] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.reshape(-1, packed.shape[1])[:n].astype(np.int64)


def unpack_cols(packed, bits, n):
    """int32 [g, n*bits/32] -> fields [g, n]: field k of word i is output column i*pf + k."""
    return unpack_rows(packed.T.copy(), bits, n).T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gptq_dir")
    ap.add_argument("f32_dir")
    ap.add_argument("--name", default=None)
    ap.add_argument("--ids", default=None)
    ap.add_argument("--logits", default=None)
    a = ap.parse_args()
    name = a.name or a.gptq_dir
    cfg = json.load(open(f"{a.gptq_dir}/config.json"))
    qc = cfg["quantization_config"]
    qc_file = json.load(open(f"{a.gptq_dir}/quantize_config.json"))
    bits, gs, desc_act, sym = qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"]
    fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
    assert qc["quant_method"] == "gptq", qc
    assert fmt == "gptq", f"expected a v1 checkpoint, got {fmt}"
    assert all(qc_file.get(k) == qc.get(k) for k in ("bits", "group_size", "desc_act", "sym")), (qc, qc_file)
    g = load_dir(a.gptq_dir)
    ref = load_dir(a.f32_dir)
    maxq = (1 << bits) - 1
    prefixes = sorted(k[: -len(".qweight")] for k in g if k.endswith(".qweight"))
    n_w = 0
    mism = {"masked": 0, "gptqmodel": 0, "autogptq": 0}
    overflow_fields = 0
    fields = 0
    gidx_nonmono = 0
    worst = 0.0
    for p in prefixes:
        qw, qz, sc, gi = g[p + ".qweight"], g[p + ".qzeros"], g[p + ".scales"], g[p + ".g_idx"]
        w_ref = ref[p + ".weight"].astype(np.float32)  # [out, in]
        out_f, in_f = w_ref.shape
        assert qw.dtype == np.int32 and qw.shape == (in_f * bits // 32, out_f), (p, qw.shape)
        ng = in_f // gs if gs > 0 else 1
        assert qz.dtype == np.int32 and qz.shape == (ng, out_f * bits // 32), (p, qz.shape)
        assert sc.dtype == np.float16 and sc.shape == (ng, out_f), (p, sc.shape, sc.dtype)
        assert gi.shape == (in_f,), (p, gi.shape)
        gi = gi.astype(np.int64)
        if not desc_act:
            assert np.array_equal(gi, np.arange(in_f) // (gs if gs > 0 else in_f)), f"{p}: g_idx is not j // group_size"
        else:
            gidx_nonmono += int(np.any(np.diff(gi) < 0))
            assert np.array_equal(np.bincount(gi, minlength=ng), np.full(ng, gs if gs > 0 else in_f)), f"{p}: g_idx group sizes"
        codes = unpack_rows(qw, bits, in_f)  # [in, out]
        field = unpack_cols(qz, bits, out_f)  # [ng, out]
        fields += field.size
        overflow_fields += int((field == maxq).sum()) if not sym else 0
        # GPTQModel: whole-word add of one per field on the int32 words, then masked unpack.
        one_per_field = sum(1 << (bits * k) for k in range(32 // bits))
        qz_v2 = ((qz.astype(np.uint64) & 0xFFFFFFFF) + one_per_field) & 0xFFFFFFFF
        zeros = {
            "masked": (field + 1) & maxq,
            "gptqmodel": unpack_cols(qz_v2.astype(np.uint32).view(np.int32), bits, out_f),
            "autogptq": field + 1,
        }
        s = sc.astype(np.float32)[gi]  # [in, out]
        for k, z in zeros.items():
            w = (s * (codes - z[gi]).astype(np.float32)).T  # [out, in]
            d = np.abs(w - w_ref)
            mism[k] += int((d > 0).sum())
            if k == "masked":
                worst = max(worst, float(d.max()))
            if k == "gptqmodel":
                g[p + ".__deq"] = w
        n_w += w_ref.size
    print(
        f"details {name}: bits={bits} group_size={gs} desc_act={desc_act} sym={sym} "
        f"checkpoint_format={fmt}; {len(prefixes)} quantized linears, {n_w} weights; "
        f"act-order layers with non-monotonic g_idx: {gidx_nonmono}; "
        f"zero fields holding 2^bits-1 (asymmetric zero 0, v1 overflow): {overflow_fields} of {fields}; "
        f"weights differing from microllm's f32 reading: masked {mism['masked']}, "
        f"GPTQModel v1->v2 {mism['gptqmodel']}, AutoGPTQ +1 {mism['autogptq']}; "
        f"max abs diff (masked) {worst:.3g}"
    )
    logit_part = ""
    if a.ids and a.logits:
        import torch
        from safetensors.torch import load_file as tload
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(2)
        model = AutoModelForCausalLM.from_pretrained(a.f32_dir, dtype=torch.float32).eval()
        sd = {p + ".weight": torch.from_numpy(g[p + ".__deq"]) for p in prefixes}
        missing = model.load_state_dict(sd, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
        ids = tload(a.ids)["input_ids"]
        ours = tload(a.logits)["logits"].float()
        with torch.no_grad():
            theirs = model(ids).logits.float()
        top1 = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
        logit_part = f" gptqmodel-weights-in-transformers: max_abs={(theirs - ours).abs().max().item():.4g} top1={top1 * 100:.2f}%"
    ok = mism["masked"] == 0 and (mism["gptqmodel"] == 0 or not sym) and (sym is False or mism["autogptq"] == 0)
    print(
        f"RESULT {name} gptq-layout(reference unpack) loaded=yes "
        f"max_abs={worst:.4g} mismatched_weights masked={mism['masked']} gptqmodel={mism['gptqmodel']} "
        f"autogptq={mism['autogptq']} of {n_w}{logit_part} {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
