"""Regenerate ``pref_300.jsonl`` (preference pairs), ``kto_300.jsonl`` (labelled answers) and
``text_300.jsonl`` (plain text), bundled for the rm, dpo, kto and pt stages.

Written by us from the bundled instruction set (``make_alpaca``): the chosen answer is the row's
computed or checked answer; the rejected one is either an evasive non-answer or another row's
answer (off topic). A model that reads the prompt tells them apart easily, which is the point: a
reward model should separate them quickly and a preference method should widen its margin on them
(an untrained model can only spot the evasions, ``EVASIVE``). KTO rows take the same answers
unpaired: even rows keep the good answer (``label: true``), odd rows the bad one (``label: false``).
The text rows are the instruction rows written out as short documents. Run
``python -m raytune_ft.data.builtin.make_preference``; the seed keeps the files stable.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .make_alpaca import make_rows

__all__ = ["EVASIVE", "make_kto_rows", "make_pairs", "make_text_rows"]

EVASIVE = [
    "I am not sure.",
    "I don't know the answer to that.",
    "That is hard to say.",
    "Sorry, I cannot help with this.",
    "It depends.",
    "You should look it up somewhere else.",
]


def make_pairs(n: int = 300, seed: int = 0) -> list[dict[str, str]]:
    """``n`` alpaca-style pairs: instruction, input, chosen, rejected."""
    rng = random.Random(seed)
    rows = make_rows(n, seed)
    pairs = []
    for i, row in enumerate(rows):
        off_topic = rows[(i + rng.randint(1, n - 1)) % n]["output"]
        rejected = rng.choice(EVASIVE) if i % 2 else off_topic
        if rejected == row["output"]:
            rejected = rng.choice(EVASIVE)
        pairs.append({"instruction": row["instruction"], "input": row["input"], "chosen": row["output"],
                      "rejected": rejected})  # fmt: skip
    return pairs


def make_kto_rows(n: int = 300, seed: int = 0) -> list[dict[str, object]]:
    """``n`` alpaca-style rows with a KTO ``label``: alternately the good and the bad answer."""
    return [
        {
            "instruction": p["instruction"],
            "input": p["input"],
            "output": p["rejected" if i % 2 else "chosen"],
            "label": not i % 2,
        }
        for i, p in enumerate(make_pairs(n, seed))
    ]


def make_text_rows(n: int = 300, seed: int = 0) -> list[dict[str, str]]:
    """``n`` pre-training documents (a ``text`` column): question, input and answer as prose."""
    return [
        {"text": "\n".join(part for part in (r["instruction"], r["input"], r["output"]) if part)}
        for r in make_rows(n, seed)
    ]


def _write(name: str, rows: list[dict[str, object]] | list[dict[str, str]]) -> None:
    out = Path(__file__).with_name(name)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    _write("pref_300.jsonl", make_pairs())
    _write("kto_300.jsonl", make_kto_rows())
    _write("text_300.jsonl", make_text_rows())
