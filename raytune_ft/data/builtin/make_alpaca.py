"""Regenerate ``alpaca_300.jsonl``, the bundled alpaca-style instruction set.

The rows are written by us (no hub download is possible here) and every answer is
computed or checked, so a model trained on them learns nothing false. Run
``python -m raytune_ft.data.builtin.make_alpaca`` to rewrite the file; the seed keeps it stable.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = ["make_rows"]

_CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Australia": "Canberra",
    "Brazil": "Brasília",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "India": "New Delhi",
    "China": "Beijing",
    "Mexico": "Mexico City",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Poland": "Warsaw",
    "Portugal": "Lisbon",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "Argentina": "Buenos Aires",
    "Chile": "Santiago",
    "Peru": "Lima",
    "Vietnam": "Hanoi",
    "Thailand": "Bangkok",
    "Ireland": "Dublin",
}
_ANTONYMS = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "strong": "weak",
    "rich": "poor",
    "full": "empty",
    "high": "low",
    "new": "old",
    "hard": "soft",
    "loud": "quiet",
    "wet": "dry",
    "begin": "end",
    "push": "pull",
    "win": "lose",
    "accept": "refuse",
    "ancient": "modern",
}
_FACTS = [
    (
        "What is photosynthesis?",
        "Photosynthesis is the process by which plants, algae and some bacteria use "
        "sunlight, water and carbon dioxide to make glucose and release oxygen.",
    ),
    (
        "Why is the sky blue?",
        "Sunlight is scattered by the molecules in the air, and short blue wavelengths "
        "are scattered much more than red ones, so blue light reaches our eyes from every direction.",
    ),
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.",
    ),
    (
        "How many continents are there?",
        "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America.",
    ),
    (
        "What is gravity?",
        "Gravity is the force by which masses attract each other. On Earth it gives "
        "objects weight and makes them fall toward the ground.",
    ),
    (
        "What does a CPU do?",
        "A CPU, or central processing unit, executes the instructions of computer "
        "programs: arithmetic, logic, control and input/output operations.",
    ),
    (
        "What is a prime number?",
        "A prime number is a whole number greater than 1 whose only divisors are "
        "1 and itself, such as 2, 3, 5, 7 and 11.",
    ),
    (
        "Give three tips for staying healthy.",
        "1. Eat a balanced diet with plenty of vegetables and fruit.\n2. Exercise regularly.\n3. Get enough sleep.",
    ),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    (
        "What is machine learning?",
        "Machine learning is a field of computer science in which programs learn "
        "patterns from data instead of being explicitly programmed for each rule.",
    ),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is an adjective?", "An adjective is a word that describes a noun, such as 'red', 'tall' or 'happy'."),
    ("What is the speed of light?", "The speed of light in a vacuum is about 299,792 kilometres per second."),
    (
        "Explain what a noun is.",
        "A noun is a word that names a person, place, thing or idea, such as 'teacher', 'city', 'book' or 'freedom'.",
    ),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius (32 degrees Fahrenheit)."),
    ("Name the three primary colours of light.", "The primary colours of light are red, green and blue."),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines with five, seven and five syllables."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid."),
    (
        "Why do we have seasons?",
        "Earth's axis is tilted, so as Earth orbits the Sun each hemisphere receives "
        "more direct sunlight in summer and less in winter.",
    ),
]
_WORDS = [
    "banana",
    "keyboard",
    "elephant",
    "mountain",
    "river",
    "computer",
    "library",
    "sunflower",
    "raspberry",
    "notebook",
    "umbrella",
    "giraffe",
    "pineapple",
    "telescope",
    "butterfly",
]


def _arithmetic(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    op, sym, val = rng.choice([("add", "+", a + b), ("subtract", "-", a - b), ("multiply", "*", a * b)])
    if op == "subtract":
        return {"instruction": f"What is {a} minus {b}?", "input": "", "output": f"{a} - {b} = {val}"}
    verb = "plus" if op == "add" else "times"
    return {"instruction": f"Calculate {a} {verb} {b}.", "input": "", "output": f"{a} {sym} {b} = {val}"}


def _count_letter(rng: random.Random) -> dict[str, str]:
    word = rng.choice(_WORDS)
    letter = rng.choice(sorted(set(word)))
    n = word.count(letter)
    plural = "time" if n == 1 else "times"
    return {
        "instruction": f"How many times does the letter '{letter}' appear in the word '{word}'?",
        "input": "",
        "output": f"The letter '{letter}' appears {n} {plural} in '{word}'.",
    }


def _reverse(rng: random.Random) -> dict[str, str]:
    word = rng.choice(_WORDS)
    return {"instruction": "Reverse the letters of the word below.", "input": word, "output": word[::-1]}


def _sort_numbers(rng: random.Random) -> dict[str, str]:
    nums = rng.sample(range(1, 100), rng.randint(4, 7))
    return {
        "instruction": "Sort these numbers in ascending order.",
        "input": ", ".join(map(str, nums)),
        "output": ", ".join(map(str, sorted(nums))),
    }


def _capital(rng: random.Random) -> dict[str, str]:
    country = rng.choice(sorted(_CAPITALS))
    return {
        "instruction": f"What is the capital of {country}?",
        "input": "",
        "output": f"The capital of {country} is {_CAPITALS[country]}.",
    }


def _antonym(rng: random.Random) -> dict[str, str]:
    word = rng.choice(sorted(_ANTONYMS))
    return {
        "instruction": "Give the opposite of the following word.",
        "input": word,
        "output": f"The opposite of '{word}' is '{_ANTONYMS[word]}'.",
    }


def _uppercase(rng: random.Random) -> dict[str, str]:
    text = " ".join(rng.sample(_WORDS, 3))
    return {"instruction": "Convert the text to upper case.", "input": text, "output": text.upper()}


_TASKS = [_arithmetic, _count_letter, _reverse, _sort_numbers, _capital, _antonym, _uppercase]


def make_rows(n: int = 300, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows: the hand-written facts first, then seeded computed tasks, without duplicates."""
    rng = random.Random(seed)
    rows = [{"instruction": q, "input": "", "output": a} for q, a in _FACTS]
    seen = {r["instruction"] + r["input"] for r in rows}
    while len(rows) < n:
        row = rng.choice(_TASKS)(rng)
        if row["instruction"] + row["input"] not in seen:
            seen.add(row["instruction"] + row["input"])
            rows.append(row)
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("alpaca_300.jsonl")
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in make_rows()), encoding="utf-8")
    print(f"wrote {out}")
