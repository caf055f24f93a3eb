#!/usr/bin/env python3
"""microllm's `--protocol llama-cpp` task scoring beside llama-perplexity's own, item by item.

For each llama.cpp binary multiple-choice file, `llama-perplexity --multiple-choice` scores
every task in order and prints the running accuracy after each, from which each item's
outcome is recovered; `microllm eval --task T --protocol llama-cpp` scores the same file.
Prints one table row per file; exits 1 when accuracies differ by more than 0.5 points.

Usage: check_llama_tasks.py MICROLLM LLAMA_BIN_DIR GGUF COMPUTE FILE.bin:TASK...
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def main():
    microllm, llama, gguf, compute = sys.argv[1:5]
    failed = False
    print(f"| file | items | same outcome | acc microllm (--compute {compute}) | acc llama-perplexity | |")
    print("|---|---|---|---|---|---|", flush=True)
    for spec in sys.argv[5:]:
        path, task = spec.rsplit(":", 1)
        out = subprocess.run(
            [f"{llama}/llama-perplexity", "-m", gguf, "-bf", path, "--multiple-choice",
             "-t", "2", "-c", "2048"], capture_output=True, text=True, check=True)
        running = [float(m.group(2)) / 100 for m in
                   re.finditer(r"^(\d+)\t([\d.]+)$", out.stdout + out.stderr, re.M)]
        theirs = [round(a * (i + 1) - (running[i - 1] * i if i else 0)) == 1
                  for i, a in enumerate(running)]
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([microllm, "eval", "-m", gguf, "--task", task, "-d", path,
                            "--protocol", "llama-cpp", "--compute", compute, "--json", f.name],
                           check=True, stdout=subprocess.DEVNULL)
            mine = json.load(open(f.name))["result"]
        ours = [it["pred"] == it["gold"] for it in mine["per_item"]]
        assert len(ours) == len(theirs), (len(ours), len(theirs))
        same = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
        acc_l = sum(theirs) / len(theirs)
        bad = abs(acc_l - mine["acc"]) > 0.005 + 1e-9
        failed |= bad
        print(f"| {Path(path).name} | {len(ours)} | {same:.1%} | {mine['acc']:.4f} | {acc_l:.4f} | "
              f"{'FAIL' if bad else 'ok'} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
