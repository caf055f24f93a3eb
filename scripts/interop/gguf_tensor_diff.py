"""Compares the tensor data of two GGUF files, tensor by tensor: how many are byte-identical,
and for the others how many bytes differ. Standard library only (no `gguf` package).

Usage: python3 scripts/interop/gguf_tensor_diff.py A.gguf B.gguf
"""
import struct, sys
def read(path):
    b = open(path, "rb").read()
    at = 4
    def u32():
        nonlocal at; v = struct.unpack_from("<I", b, at)[0]; at += 4; return v
    def u64():
        nonlocal at; v = struct.unpack_from("<Q", b, at)[0]; at += 8; return v
    def string():
        n = u64(); nonlocal at; s = b[at:at+n].decode(); at += n; return s
    sizes = {0:1,1:1,2:2,3:2,4:4,5:4,6:4,7:1,10:8,11:8,12:8}
    def skip(t):
        nonlocal at
        if t == 8: string()
        elif t == 9:
            it = u32(); n = u64()
            for _ in range(n): skip(it)
        else: at += sizes[t]
    ver = u32(); nt = u64(); nkv = u64()
    align = 32
    for _ in range(nkv):
        k = string(); t = u32()
        if k == "general.alignment": align = u32()
        else: skip(t)
    infos = []
    for _ in range(nt):
        name = string(); nd = u32(); dims = [u64() for _ in range(nd)]; ty = u32(); off = u64()
        infos.append((name, dims, ty, off))
    data = (at + align - 1)//align*align
    bs = {0:(1,4),1:(1,2),8:(32,34),6:(32,22),7:(32,24),2:(32,18),3:(32,20),10:(256,84),11:(256,110),
          12:(256,144),13:(256,176),14:(256,210),20:(32,18),23:(256,136),30:(1,2)}
    out = {}
    for name, dims, ty, off in infos:
        n = 1
        for d in dims: n *= d
        blk, sz = bs[ty]
        out[name] = (ty, b[data+off:data+off+n//blk*sz])
    return out
a, c = read(sys.argv[1]), read(sys.argv[2])
same = diff = other = 0
for name in sorted(a):
    ta, da = a[name]; tc, dc = c[name]
    if ta != tc: print("type differs", name, ta, tc); other += 1; continue
    if da == dc: same += 1
    else:
        diff += 1
        nd = sum(1 for x, y in zip(da, dc) if x != y)
        if diff <= 12: print("differs", name, "type", ta, f"{nd}/{len(da)} bytes")
print("same", same, "differ", diff, *(["of another type", other] if other else []))
