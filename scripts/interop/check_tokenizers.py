"""llama.cpp tokenizes microllm's GGUF files as the Hugging Face tokenizer they came from.

For each real tokenizer (scripts/fetch-tokenizers.sh) a tiny random model of the matching
family is given that tokenizer's vocabulary, converted to GGUF by `microllm convert`, and
`llama-tokenize` is run on corner-case texts and on lines of wiki.eval.txt. Its ids must equal
those of the `tokenizers` library (the implementation behind transformers' fast tokenizers)
on the original tokenizer.json, BOS included where the tokenizer adds one.

Usage: python check_tokenizers.py MICROLLM LLAMA_TOKENIZE TOKENIZERS_DIR FIXTURES_DIR TEXT OUT
Prints one RESULT line per tokenizer; exits non-zero if any text differs.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

CASES = [
    ("llama2", "llama-tiny", "LLaMA-style 32000 (SentencePiece)"),
    ("gemma3", "gemma3-tiny", "Gemma 3 (SentencePiece, no space prefix)"),
    ("llama3", "llama3-tiny", "Llama-3 (byte-level, llama-bpe)"),
    ("qwen2_5", "qwen2-tiny", "Qwen2.5 (byte-level, qwen2)"),
]

CORNER = [
    "Hello world",
    " leading space and  two  spaces",
    "digits 1234567 and 3.14159, 2024-12-03",
    "they're, we've, I'd, it's",
    "naïve café — Ünïcödé",
    "日本語のテキスト and 中文",
    "emoji 🙂🚀 and tabs\tand\nnewlines\n\n",
]


def model_dir(fixture: Path, tok_dir: Path, vocab: int, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((fixture / "config.json").read_text())
    old = cfg["vocab_size"]
    cfg["vocab_size"] = vocab
    (dest / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    tensors = {}
    for name, t in load_file(str(fixture / "model.safetensors")).items():
        if t.shape and t.shape[0] == old:
            t = (rng.standard_normal((vocab,) + t.shape[1:]) * 0.02).astype(np.float32)
        tensors[name] = t
    save_file(tensors, str(dest / "model.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, dest / f)


def llama_ids(tool: str, gguf: Path, text: str, scratch: Path) -> list[int]:
    scratch.write_text(text, encoding="utf-8")
    out = subprocess.run(
        [tool, "-m", str(gguf), "-f", str(scratch), "--ids", "--log-disable"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> int:
    microllm, tool, toks, fixtures, text_file, out = sys.argv[1:7]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wiki = [l for l in Path(text_file).read_text(encoding="utf-8").splitlines() if l.strip()]
    texts = CORNER + wiki[:150]
    # One long chunk too: 20 000 characters of running text.
    texts.append("\n".join(wiki[150:])[:20000])
    failed = 0
    for name, fixture, label in CASES:
        tok_dir = Path(toks) / name
        ref = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        mdir = out / f"{name}-model"
        model_dir(Path(fixtures) / fixture, tok_dir, ref.get_vocab_size(True), mdir)
        gguf = out / f"{name}.gguf"
        subprocess.run(
            [microllm, "convert", "--model", str(mdir), "--out", str(gguf),
             "--gguf-type", "f16", "--force"],
            check=True, capture_output=True,
        )
        same, tokens, first_bad = 0, 0, None
        for t in texts:
            want = ref.encode(t).ids
            got = llama_ids(tool, gguf, t, out / "text.txt")
            tokens += len(want)
            if want == got:
                same += 1
            elif first_bad is None:
                first_bad = (t[:60], want[:12], got[:12])
        status = "PASS" if same == len(texts) else "FAIL"
        failed += status == "FAIL"
        print(f"RESULT {status} {label}: llama-tokenize on microllm's GGUF = tokenizers on "
              f"tokenizer.json for {same}/{len(texts)} texts ({tokens} tokens)")
        if first_bad:
            print(f"  first difference: {first_bad}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
