"""A small fake data mirror for tests: every file of the offline mirror's layout (SOURCES.md), with our own text.

`write_fixture_mirror(root)` fills `root` from a few dozen hand-written sentences recombined by a seeded RNG, in each
data set's on-disk format; nothing in it comes from the real data sets. It backs the `data_dir` fixture off-mirror.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

SEED = 1234

# Hand-written for these tests; deliberately plain so any tokenizer handles them.
SENTENCES = (
    "The old mill stood at the bend of the river for almost two hundred years.",
    "Every spring the farmers carried their grain to the mill on narrow carts.",
    "The miller kept a ledger of every sack, written in a careful hand.",
    "A storm in the autumn of that year tore the roof from the granary.",
    "The village council voted to rebuild it with stone from the nearby quarry.",
    "Children from the school walked to the quarry to watch the masons at work.",
    "The new roof was finished before the first snow fell on the valley.",
    "Trains began to stop at the village station twice a day in the summer.",
    "The station master planted roses along the platform and watered them each morning.",
    "Travellers often remarked on the smell of bread from the bakery across the road.",
    "The bakery opened before dawn and closed when the last loaf was sold.",
    "Its owner learned the trade from her grandfather, who baked for the soldiers.",
    "On market days the square filled with stalls selling cheese, apples and wool.",
    "A small orchestra played in the square on the evening of the harvest festival.",
    "The church bell rang at noon, and the workers in the fields stopped to eat.",
    "Astronomers from the university built a small observatory on the northern hill.",
    "On clear nights they measured the positions of comets and faint stars.",
    "One of them discovered a variable star whose brightness changed every eleven days.",
    "The observatory's telescope was later moved to a museum in the capital.",
    "The river froze so hard one winter that people skated from one town to the next.",
    "A wooden bridge was replaced by an iron one after a flood carried it away.",
    "Engineers tested the iron bridge by driving four loaded wagons across it at once.",
    "The bridge still carries traffic, although heavy lorries must take another road.",
    "The local newspaper printed its first issue on a press bought from a nearby city.",
    "Its editor wrote long articles about the weather, the harvest and the price of coal.",
    "Readers sent letters complaining that the paper arrived late on rainy days.",
    "A lighthouse on the coast guided fishing boats home through the autumn fog.",
    "The keeper climbed one hundred and twelve steps to light the lamp each evening.",
    "During the war the light was dimmed so that it could not be seen from the sea.",
    "After the war the lighthouse was fitted with an electric lamp and a foghorn.",
    "The foghorn could be heard in the village on calm nights, three miles away.",
    "A botanist collected hundreds of plants from the marshes south of the town.",
    "Her notebooks describe the colour of each flower and the soil where it grew.",
    "Some of the plants she found have since disappeared from the region entirely.",
    "The town library keeps her notebooks in a locked cabinet in the reading room.",
    "Visitors may read them on request, but they are not allowed to take photographs.",
    "A football club was founded by workers from the brick factory in the early years.",
    "The team played on a field behind the factory until a proper ground was built.",
    "Its best season ended with a cup final lost by a single goal in the rain.",
    "The factory closed many decades later, and its chimney was pulled down in a day.",
    "Today the site is a park with a pond, a playground and a row of tall poplars.",
    "Ducks nest on a small island in the pond, and herons visit in the early morning.",
    "The park keeper says that foxes cross the lawn most evenings after dark.",
    "A cycling race passes through the valley each summer and draws large crowds.",
    "Riders climb the steep road to the pass, where the wind is often fierce.",
    "The record for the climb has stood for more than twenty years.",
    "Local cooks serve a thick soup of beans and smoked ham to the spectators.",
    "Many families return to the valley every year to watch the race together.",
)
TOPICS = ("Old Mill", "Harvest Festival", "Northern Observatory", "Iron Bridge", "Coastal Lighthouse",
          "Marsh Botany", "Brick Factory", "Valley Race", "Village Station", "Market Square")
SECTIONS = ("History", "Construction", "Later years", "Legacy", "Description", "Events")

# One row per everyday object: (name, where it is kept, what it is for, what it is made of).
OBJECTS = (
    ("kettle", "kitchen", "boil water", "steel"),
    ("umbrella", "hallway", "stay dry in the rain", "nylon"),
    ("lantern", "shed", "see in the dark", "brass"),
    ("ladder", "garage", "reach a high shelf", "aluminium"),
    ("broom", "cupboard", "sweep the floor", "straw"),
    ("spade", "garden shed", "dig a hole for a tree", "iron"),
    ("needle", "sewing box", "mend a torn shirt", "steel"),
    ("blanket", "bedroom", "keep warm at night", "wool"),
    ("compass", "rucksack", "find north on a hike", "brass"),
    ("bucket", "yard", "carry water to the animals", "zinc"),
    ("kite", "attic", "play in the wind on a hill", "paper"),
    ("saw", "workshop", "cut a plank in two", "steel"),
)


def write_fixture_mirror(root: Path, seed: int = SEED) -> Path:
    """Write the fake mirror under `root` (created if needed) and return `root`."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[random.Random], str]] = {
        "wikitext2/wiki.test.raw": lambda r: _wikitext(r, n_articles=36),
        "ptb/ptb.valid.txt": lambda r: _ptb(r, n_lines=1500),
        "ptb/ptb.test.txt": lambda r: _ptb(r, n_lines=1600),
        "c4/c4-sample.00000-of-00001.json": _c4,
        "alpaca/alpaca_data_cleaned_first5000.json": _alpaca,
    }
    for path, write in writers.items():
        _write(root / path, write(rng))
    _tasks(root, rng)
    (root / "SOURCES.md").write_text("Fake mirror written by tests/fixture_data.py; not real data.\n", encoding="utf-8")
    return root


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _paragraph(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.sample(SENTENCES, rng.randint(low, high)))


# --- WikiText-2 raw: " = Title = " headings, " = = Section = = " subheadings, space-tokenized paragraphs -----------
def _wikify(text: str) -> str:
    # The raw WikiText layout: punctuation split off by spaces, in-word hyphens as " @-@ ".
    text = re.sub(r"(?<=\w)-(?=\w)", " @-@ ", text)
    text = re.sub(r"([.,;:!?()])", r" \1 ", text).replace("'s", " 's")
    return re.sub(r" +", " ", text).strip()


def _wikitext(rng: random.Random, n_articles: int) -> str:
    lines: list[str] = []
    for k in range(n_articles):
        lines += [" ", f" = The {TOPICS[k % len(TOPICS)]} ( part {k + 1} ) = ", " "]
        lines += [f" {_wikify(_paragraph(rng, 4, 8))} ", " "]
        for section in rng.sample(SECTIONS, 3):
            lines += [f" = = {section} = = ", " "]
            lines += [item for _ in range(rng.randint(2, 3)) for item in (f" {_wikify(_paragraph(rng, 4, 8))} ", " ")]
    return "".join(line + "\n" for line in lines)


# --- PTB (Mikolov): lower case, no punctuation, numbers as N, rare words as <unk>, one sentence per line ------------
def _ptbify(sentence: str, rng: random.Random) -> str:
    words = re.sub(r"[.,;:!?()]", " ", sentence.replace("'s", " 's")).split()
    out = []
    for word in words:
        if any(ch.isdigit() for ch in word):
            out.append("N")
        elif (word[0].isupper() and rng.random() < 0.3) or rng.random() < 0.04:
            out.append("<unk>")
        else:
            out.append(word.lower())
    return " ".join(out)


def _ptb(rng: random.Random, n_lines: int) -> str:
    return "".join(f" {_ptbify(rng.choice(SENTENCES), rng)} \n" for _ in range(n_lines))


# --- C4 sample: one JSON document per line (text, url, date); long documents and a few short ones -----------------
def _c4(rng: random.Random) -> str:
    docs = []
    for i in range(200):  # `minillm prune` calibrates on 128 documents of at least 128 SmolLM2 tokens
        short = i % 8 == 7  # some documents shorter than a calibration window
        paragraphs = [_paragraph(rng, 1, 2)] if short else [_paragraph(rng, 3, 6) for _ in range(rng.randint(3, 4))]
        docs.append({"text": "\n".join(paragraphs), "url": f"https://example.org/fixture/{i}",
                     "date": f"2020-0{1 + i % 9}-1{i % 10}T12:00:00Z"})
    return _jsonl(docs)


# --- Alpaca-cleaned subset: one JSON array of {instruction, input, output}, indented like the real file -----------
def _alpaca(rng: random.Random) -> str:
    records = []
    for i in range(60):
        name, place, use, material = OBJECTS[i % len(OBJECTS)]
        kind = i % 4
        if kind == 0:
            record = {"instruction": f"Explain what a {name} is used for.", "input": "",
                      "output": f"A {name} is used to {use}. It is usually made of {material}."}
        elif kind == 1:
            passage = _paragraph(rng, 2, 3)
            record = {"instruction": "Summarize the following text in one sentence.", "input": passage,
                      "output": passage.split(". ")[0].rstrip(".") + "."}
        elif kind == 2:
            record = {"instruction": "Where would you usually keep this object?", "input": f"a {name}",
                      "output": f"You would usually keep a {name} in the {place}."}
        else:
            record = {"instruction": "Write two sentences about a small village.", "input": "",
                      "output": _paragraph(rng, 2, 2)}
        records.append(record)
    return json.dumps(records, indent=4) + "\n"


# --- the seven zero-shot tasks, each in its original release format ----------------------------------------------
N_TASK_ITEMS = 12


def _other(rng: random.Random, i: int) -> tuple[str, str, str, str]:
    return OBJECTS[(i + rng.randint(1, len(OBJECTS) - 1)) % len(OBJECTS)]


def _distractors(rng: random.Random, name: str, k: int) -> list[str]:
    """`k` other objects, none made of the same material (so the ARC-Challenge question has one right answer)."""
    material = next(o[3] for o in OBJECTS if o[0] == name)
    return rng.sample([o[0] for o in OBJECTS if o[3] != material], k)


def _tasks(root: Path, rng: random.Random) -> None:
    boolq, piqa, piqa_labels, hella, wino, wino_labels, obqa = [], [], [], [], [], [], []
    for i, (name, place, use, material) in enumerate(OBJECTS[:N_TASK_ITEMS]):
        other = _other(rng, i)
        truth = rng.random() < 0.5
        boolq.append({"question": f"is a {name} used to {use if truth else other[2]}",
                      "passage": f"{name.capitalize()} -- A {name} is usually kept in the {place}. People use it to "
                                 f"{use}. Most are made of {material}.",
                      "idx": i, "label": "true" if truth else "false"})
        gold = rng.randint(0, 1)
        solutions = [f"Use a {name}.", f"Use a {other[0]}."][:: 1 if gold == 0 else -1]
        piqa.append({"goal": f"How can I {use}?", "sol1": solutions[0], "sol2": solutions[1]})
        piqa_labels.append(str(gold))
        endings = [f"picks up the {name} to {use}.", f"hides the {name} under the {other[1]}.",
                   "[title] walks out of the room.", f"paints the {name} {rng.choice(['red', 'blue'])}."]
        order = rng.sample(range(4), 4)
        hella.append({"ind": 100 + i, "activity_label": use.capitalize(),
                      "ctx_a": f"A person walks into the {place}.", "ctx_b": "the person",
                      "ctx": f"A person walks into the {place}. the person", "split": "val",
                      "split_type": "indomain" if i % 2 else "zeroshot", "label": order.index(0),
                      "endings": [endings[j] for j in order], "source_id": f"fixture~{i}"})
        swap = rng.random() < 0.5
        first, second = (other[0], name) if swap else (name, other[0])
        wino.append({"qID": f"fixture-{i}", "sentence": f"The {first} was more useful than the {second} because "
                     f"the _ could {use}.", "option1": first, "option2": second, "answer": "2" if swap else "1"})
        wino_labels.append("2" if swap else "1")
        obqa.append(_mc_row(f"{i}-fixture", f"To {use}, a person should pick",
                            [f"a {o}" for o in [name, *_distractors(rng, name, 3)]], rng))
    _write(root / "boolq/val.jsonl", _jsonl(boolq))
    _write(root / "piqa/valid.jsonl", _jsonl(piqa))
    _write(root / "piqa/valid-labels.lst", "".join(label + "\n" for label in piqa_labels))
    _write(root / "hellaswag/hellaswag_val_subset1000.jsonl", _jsonl(hella))
    _write(root / "winogrande/dev.jsonl", _jsonl(wino))
    _write(root / "winogrande/dev-labels.lst", "".join(label + "\n" for label in wino_labels))
    _write(root / "openbookqa/test.jsonl", _jsonl(obqa))
    for level, path in (("Easy", "arc/ARC-Easy-Test.jsonl"), ("Challenge", "arc/ARC-Challenge-Test.jsonl")):
        rows = []
        for i, (name, _place, use, material) in enumerate(OBJECTS[:N_TASK_ITEMS]):
            # As in the original release, a few items have 3 or 5 choices or the numeric labels "1"-"4".
            n_choices = {3: 3, 7: 5}.get(i, 4)
            question = f"Which object is most often used to {use}?" if level == "Easy" else (
                f"Which object below is usually made of {material}?")
            choices = [name, *_distractors(rng, name, n_choices - 1)]
            rows.append(_mc_row(f"Fixture{level}_{i}", question, choices, rng, numeric=i == 5))
        _write(root / path, _jsonl(rows))


def _mc_row(row_id: str, stem: str, choices: list[str], rng: random.Random, numeric: bool = False) -> dict:
    """An ARC/OpenBookQA release row; `choices[0]` is the right answer before shuffling."""
    order = rng.sample(range(len(choices)), len(choices))
    labels = [str(k + 1) if numeric else "ABCDE"[k] for k in range(len(choices))]
    return {"id": row_id, "question": {"stem": stem, "choices": [
        {"text": choices[j], "label": label} for j, label in zip(order, labels, strict=True)]},
        "answerKey": labels[order.index(0)]}
