#!/usr/bin/env python3
"""microllm's `--protocol llama-cpp` task scoring beside llama-perplexity's own, item by item.

For each llama.cpp binary multiple-choice file, `llama-perplexity --multiple-choice` scores
every task in order and prints the running accuracy after each, from which each item's
outcome is recovered; for a WinoGrande CSV, `llama-perplexity --winogrande` prints each item's
two scores (mean log-probability per token) and its choice. `microllm eval --task T
--protocol llama-cpp` scores the same file (the same N items when `:N` is given: llama.cpp
draws them, microllm must draw the same). Prints one table row per file; exits 1 when
accuracies differ by more than 0.5 points.

Usage: check_llama_tasks.py MICROLLM LLAMA_BIN_DIR GGUF COMPUTE FILE:TASK[:N]...
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def llama_outcomes(llama, gguf, path, task, count):
    """Per item: (right?, (score1, score2) or None), in llama-perplexity's order."""
    if task == "winogrande":
        args = ["-f", path, "--winogrande"] + (["--winogrande-tasks", count] if count else [])
    else:
        args = ["-bf", path, "--multiple-choice"] + (
            ["--multiple-choice-tasks", count] if count else [])
    out = subprocess.run([f"{llama}/llama-perplexity", "-m", gguf, *args, "-t", "2", "-c", "2048"],
                         capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    if task == "winogrande":
        rows = re.findall(r"^\d+\t[\d.]+\t\s*(\S+)\s+(\S+)\s+(\d)\s+(\d)$", log, re.M)
        return [(int(r[2]) == int(r[3]), (float(r[0]), float(r[1]))) for r in rows]
    running = [float(m.group(2)) / 100 for m in re.finditer(r"^(\d+)\t([\d.]+)$", log, re.M)]
    return [(round(a * (i + 1) - (running[i - 1] * i if i else 0)) == 1, None)
            for i, a in enumerate(running)]


def main():
    microllm, llama, gguf, compute = sys.argv[1:5]
    failed = False
    print(f"| file | items | same outcome | max abs score difference | acc microllm (--compute {compute}) "
          "| acc llama-perplexity | |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for spec in sys.argv[5:]:
        path, task, *count = spec.split(":")
        count = count[0] if count else None
        theirs = llama_outcomes(llama, gguf, path, task, count)
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([microllm, "eval", "-m", gguf, "--task", task, "-d", path,
                            "--protocol", "llama-cpp", "--compute", compute, "--json", f.name,
                            *(["--limit", count] if count else [])],
                           check=True, stdout=subprocess.DEVNULL)
            mine = json.load(open(f.name))["result"]
        ours = [it["pred"] == it["gold"] for it in mine["per_item"]]
        assert len(ours) == len(theirs), (len(ours), len(theirs))
        same = sum(a == b for a, (b, _) in zip(ours, theirs)) / len(ours)
        deltas = [max(abs(x - y) for x, y in zip(it["logliks"], s))
                  for it, (_, s) in zip(mine["per_item"], theirs) if s is not None]
        delta = f"{max(deltas):.4f}" if deltas else "(not printed)"
        acc_l = sum(t for t, _ in theirs) / len(theirs)
        bad = abs(acc_l - mine["acc"]) > 0.005 + 1e-9
        failed |= bad
        name = Path(path).name + (f", {count} drawn" if count else "")
        print(f"| {name} | {len(ours)} | {same:.1%} | {delta} | {mine['acc']:.4f} | {acc_l:.4f} | "
              f"{'FAIL' if bad else 'ok'} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
