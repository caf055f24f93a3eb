#!/usr/bin/env python3
"""Builds multiple-choice item files from a plain English text, in each task dataset's own
layout (JSON Lines with the Hugging Face fields) plus llama.cpp's HellaSwag text file and
WinoGrande CSV.

No benchmark data can be downloaded here, so the items are made from real text: a passage
is the context, its true continuation is the right answer, and spans from elsewhere in the
text are the wrong ones (WinoGrande: a word of the sentence is blanked, the wrong option is
another word). The items test the scorers, not the model: any model and any reference must
rank the choices the same way from the same log-likelihoods.

Usage: make_task_items.py TEXT OUTDIR [ITEMS]   (default 200 items per task)
"""
import json
import random
import sys
from pathlib import Path


def passages(text):
    """Paragraphs of wikitext (headings and short lines dropped), as word lists."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        words = line.split()
        if len(words) >= 40:
            out.append(words)
    return out


def span(rng, paras, exclude, n):
    """n consecutive words from a random paragraph other than `exclude`."""
    while True:
        j = rng.randrange(len(paras))
        if j != exclude and len(paras[j]) > n + 1:
            start = rng.randrange(len(paras[j]) - n)
            return " ".join(paras[j][start : start + n])


def choice_items(rng, paras, count, n_choices):
    items = []
    for _ in range(count):
        i = rng.randrange(len(paras))
        words = paras[i]
        k = rng.randrange(12, 30)
        m = rng.randrange(6, 14)
        context = words[:k]
        gold_text = " ".join(words[k : k + m])
        gold = rng.randrange(n_choices)
        choices = [span(rng, paras, i, m) for _ in range(n_choices)]
        choices[gold] = gold_text
        items.append((context, choices, gold))
    return items


def capitalize_split(context):
    """ctx_a / ctx_b as HellaSwag has them: the last few words in ctx_b, lower-cased except
    for the first letter's case (the harness capitalizes ctx_b)."""
    cut = max(1, len(context) - 4)
    return " ".join(context[:cut]), " ".join(context[cut:])


def write_llama_binary(path, tasks):
    """llama.cpp's --multiple-choice layout: u32 count, u32 offsets, then per task the
    question, the single-answer choices and labels, an empty multiple-answer list."""
    import struct

    def string(s):
        b = s.encode("utf-8")
        return struct.pack("<I", len(b)) + b

    bodies = []
    for question, answers, gold in tasks:
        body = string(question) + struct.pack("<I", len(answers))
        body += b"".join(string(a) for a in answers)
        body += b"".join(struct.pack("<i", int(j == gold)) for j in range(len(answers)))
        bodies.append(body + struct.pack("<I", 0))
    at = 4 + 4 * len(tasks)
    offsets = []
    for body in bodies:
        offsets.append(at)
        at += len(body)
    with open(path, "wb") as f:
        f.write(struct.pack("<I", len(tasks)) + b"".join(struct.pack("<I", o) for o in offsets))
        f.write(b"".join(bodies))


def main():
    text = Path(sys.argv[1]).read_text(encoding="utf-8")
    out = Path(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    out.mkdir(parents=True, exist_ok=True)
    paras = passages(text)
    rng = random.Random(20261206)

    def write(name, docs):
        with open(out / name, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")

    hs = []
    for n, (context, choices, gold) in enumerate(choice_items(rng, paras, count + 10, 4)):
        a, b = capitalize_split(context)
        hs.append({"ind": n, "activity_label": "Wikipedia", "ctx_a": a, "ctx_b": b,
                   "ctx": a + " " + b, "endings": choices, "label": str(gold),
                   "split": "validation"})
    # The last 10 are few-shot examples (a "train" split).
    hs, hs_train = hs[:count], hs[count:]
    write("hellaswag.jsonl", hs)
    write("hellaswag_train.jsonl", hs_train)
    try:
        from lm_eval.tasks.hellaswag.utils import preprocess
    except ImportError:
        preprocess = None
    if preprocess is not None:
        # llama.cpp's file holds the harness's preprocessed query and endings.
        with open(out / "hellaswag.txt", "w", encoding="utf-8") as f:
            for d in hs:
                query = preprocess(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
                lines = [query, d["label"]] + [preprocess(e) for e in d["endings"]]
                f.write("\n".join(lines) + "\n")
        write_llama_binary(out / "hellaswag.bin", [
            (preprocess(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize()),
             [preprocess(e) for e in d["endings"]], int(d["label"])) for d in hs])

    arc = []
    for n, (context, choices, gold) in enumerate(choice_items(rng, paras, count + 10, 4)):
        labels = ["A", "B", "C", "D"]
        arc.append({"id": f"wiki-{n}", "question": " ".join(context) + " ...?",
                    "choices": {"text": choices, "label": labels}, "answerKey": labels[gold]})
    write("arc_easy.jsonl", arc[:count])
    # The harness's ARC prompt as the question of llama.cpp's multiple-choice file.
    write_llama_binary(out / "arc_easy.bin", [
        ("Question: " + d["question"] + "\nAnswer:", d["choices"]["text"],
         d["choices"]["label"].index(d["answerKey"])) for d in arc[:count]])
    write("arc_easy_train.jsonl", arc[count:])

    piqa = []
    for context, choices, gold in choice_items(rng, paras, count, 2):
        piqa.append({"goal": " ".join(context), "sol1": choices[0], "sol2": choices[1], "label": gold})
    write("piqa.jsonl", piqa)

    wino = []
    while len(wino) < count:
        i = rng.randrange(len(paras))
        words = paras[i][: rng.randrange(14, 30)]
        spots = [j for j in range(4, len(words) - 3) if words[j].isalpha() and len(words[j]) >= 4]
        if not spots:
            continue
        j = rng.choice(spots)
        other = span(rng, paras, i, 1)
        if not other.isalpha() or other == words[j]:
            continue
        options = [words[j], other]
        if rng.random() < 0.5:
            options.reverse()
        sentence = " ".join(words[:j] + ["_"] + words[j + 1 :])
        wino.append({"sentence": sentence, "option1": options[0], "option2": options[1],
                     "answer": "1" if options[0] == words[j] else "2"})
    write("winogrande.jsonl", wino)
    # llama.cpp's --winogrande CSV: index,sentence,option1,option2,answer, the sentence quoted
    # as CSV writers quote (when it holds a comma or a quote, inner quotes doubled; llama.cpp
    # finds the commas in such a line but does not undouble the quotes).
    with open(out / "winogrande.csv", "w") as f:
        for k, it in enumerate(wino):
            s = it["sentence"]
            if "," in s or '"' in s:
                s = '"' + s.replace('"', '""') + '"'
            f.write(f'{k},{s},{it["option1"]},{it["option2"]},{it["answer"]}\n')

    mmlu = []
    for context, choices, gold in choice_items(rng, paras, count + 5, 4):
        mmlu.append({"question": "What follows: " + " ".join(context),
                     "subject": "world_history", "choices": choices, "answer": gold})
    # One subject, as each of the harness's MMLU tasks has; the last 5 are its dev split.
    write("mmlu.jsonl", mmlu[:count])
    write("mmlu_dev.jsonl", mmlu[count:])


if __name__ == "__main__":
    main()
