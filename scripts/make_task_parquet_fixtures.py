#!/usr/bin/env python3
"""Writes the small task-item fixtures of microllm-eval's parquet reader test: the same few
items per task as JSON Lines and as parquet, written by pyarrow the way `datasets` writes a
split (its default snappy compression, strings as UTF-8, lists and structs nested), so the
test can check that both files read to the same items.

Usage: python3 scripts/make_task_parquet_fixtures.py   (needs pyarrow)
"""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "crates/microllm-eval/testdata/tasks"

TASKS = {
    "hellaswag": [
        {"ind": 4, "activity_label": "Baking cookies", "ctx_a": "A woman pours flour into a bowl.",
         "ctx_b": "she", "ctx": "A woman pours flour into a bowl. she",
         "endings": ["cracks two eggs into it.", "drives the bowl to work.",
                     "paints the [title] ceiling.", "sings to the oven door."],
         "source_id": "fixture-1", "split": "val", "split_type": "indomain", "label": "0"},
        {"ind": 9, "activity_label": "Fixing a bike", "ctx_a": "A man turns the bike over.",
         "ctx_b": "he", "ctx": "A man turns the bike over. he",
         "endings": ["eats the tyre.", "removes the wheel with a wrench.",
                     "flies away.", "folds the frame in half."],
         "source_id": "fixture-2", "split": "val", "split_type": "indomain", "label": "1"},
    ],
    "arc_easy": [
        {"id": "fixture-1", "question": "Which of these is a liquid at room temperature?",
         "choices": {"text": ["iron", "water", "salt", "wood"], "label": ["A", "B", "C", "D"]},
         "answerKey": "B"},
        {"id": "fixture-2", "question": "What do plants need to make food?",
         "choices": {"text": ["sunlight", "sand", "noise"], "label": ["1", "2", "3"]},
         "answerKey": "1"},
    ],
    "piqa": [
        {"goal": "Keep bread fresh.", "sol1": "Leave it open in the sun.",
         "sol2": "Store it in a closed bag.", "label": 1},
    ],
    "winogrande": [
        {"sentence": "The cup did not fit in the box because the _ was too big.",
         "option1": "cup", "option2": "box", "answer": "1"},
    ],
    "mmlu": [
        {"question": "What is 2 + 3?", "subject": "elementary_mathematics",
         "choices": ["4", "5", "6", "7"], "answer": 1},
    ],
}

OUT.mkdir(parents=True, exist_ok=True)
for task, rows in TASKS.items():
    (OUT / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), OUT / f"{task}.parquet")
    print(OUT / f"{task}.parquet")
