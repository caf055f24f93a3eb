"""Reads a GGUF file with the `gguf` package (llama.cpp's own Python reader) and prints what a
runtime would see: architecture, tokenizer model, tensor counts per type. Exits non-zero if
the keys llama.cpp needs to load a model are missing.

Usage: python3 scripts/check_gguf.py FILE.gguf   (scripts/check-gguf.sh installs `gguf`)
"""

import sys
from collections import Counter

import gguf


def text(reader, key):
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode()


def main(path):
    reader = gguf.GGUFReader(path)
    arch = text(reader, "general.architecture")
    required = [
        f"{arch}.block_count",
        f"{arch}.embedding_length",
        f"{arch}.feed_forward_length",
        f"{arch}.attention.head_count",
        f"{arch}.context_length",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
    ]
    missing = [k for k in required if k not in reader.fields]
    print(f"architecture: {arch}")
    if "tokenizer.ggml.model" in reader.fields:
        print(f"tokenizer: {text(reader, 'tokenizer.ggml.model')}")
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    for name, n in sorted(counts.items()):
        print(f"tensors {name}: {n}")
    if missing:
        print(f"missing keys: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
