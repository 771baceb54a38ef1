"""Arithmetic word problems with a verifiable integer answer, GSM8K-style (question, worked solution, `#### N`).

Seeded and deterministic: the same seed gives the same problems. Each template draws its numbers so
that every intermediate value is a non-negative integer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Diego",
    "Emma",
    "Farah",
    "Gus",
    "Hana",
    "Ivan",
    "Jade",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Umar",
    "Vera",
    "Wes",
    "Yuki",
    "Zoe",
]
ITEMS = ["apple", "marble", "sticker", "pencil", "cookie", "card", "shell", "stamp", "book", "coin", "button", "ribbon"]

Template = Callable[[random.Random], tuple[str, str, int]]


def _packs(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b, c = r.randint(2, 40), r.randint(2, 9), r.randint(2, 12)
    q = f"{name} has {a} {item}s and buys {b} packs with {c} {item}s in each pack. How many {item}s does {name} have now?"
    s = f"The packs hold {b} * {c} = {b * c} {item}s. {a} + {b * c} = {a + b * c}."
    return q, s, a + b * c


def _change(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    price, count = r.randint(2, 15), r.randint(2, 8)
    paid = price * count + r.randint(1, 50)
    q = f"A shop sells {item}s for ${price} each. {name} buys {count} of them and pays with ${paid}. How many dollars of change does {name} get?"
    s = f"The {item}s cost {count} * {price} = ${price * count}. The change is {paid} - {price * count} = ${paid - price * count}."
    return q, s, paid - price * count


def _share(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    each, kids, kept = r.randint(2, 20), r.randint(2, 9), r.randint(0, 15)
    total = each * kids + kept
    q = f"{name} has {total} {item}s, keeps {kept} and shares the rest equally among {kids} friends. How many {item}s does each friend get?"
    s = f"{name} shares {total} - {kept} = {total - kept} {item}s. Each friend gets {total - kept} / {kids} = {each}."
    return q, s, each


def _savings(r: random.Random) -> tuple[str, str, int]:
    name = r.choice(NAMES)
    weekly, weeks = r.randint(3, 60), r.randint(2, 20)
    spent = r.randint(1, weekly * weeks)
    q = f"{name} saves ${weekly} every week for {weeks} weeks and then spends ${spent} on a gift. How many dollars are left?"
    s = f"{name} saves {weekly} * {weeks} = ${weekly * weeks}. After the gift, {weekly * weeks} - {spent} = ${weekly * weeks - spent}."
    return q, s, weekly * weeks - spent


def _trip(r: random.Random) -> tuple[str, str, int]:
    speed, hours, extra = r.randint(20, 120), r.randint(2, 9), r.randint(1, 99)
    q = f"A train travels at {speed} km per hour for {hours} hours and then {extra} km more. How many km does it travel in total?"
    s = f"In {hours} hours it travels {speed} * {hours} = {speed * hours} km. In total {speed * hours} + {extra} = {speed * hours + extra} km."
    return q, s, speed * hours + extra


def _discount(r: random.Random) -> tuple[str, str, int]:
    item = r.choice(ITEMS)
    percent = r.choice([10, 20, 25, 50, 75])
    price = r.randint(1, 40) * (100 // math.gcd(100, percent))  # so that percent% of price is whole
    off = price * percent // 100
    q = f"A box of {item}s costs ${price}. It is on sale for {percent}% off. What is the sale price in dollars?"
    s = f"The discount is {percent}% of {price} = ${off}. The sale price is {price} - {off} = ${price - off}."
    return q, s, price - off


def _pages(r: random.Random) -> tuple[str, str, int]:
    name = r.choice(NAMES)
    per_day, days = r.randint(5, 40), r.randint(2, 14)
    book = per_day * days + r.randint(1, 200)
    q = f"{name}'s book has {book} pages. {name} reads {per_day} pages a day for {days} days. How many pages are left to read?"
    s = f"{name} reads {per_day} * {days} = {per_day * days} pages. {book} - {per_day * days} = {book - per_day * days} pages are left."
    return q, s, book - per_day * days


def _rows(r: random.Random) -> tuple[str, str, int]:
    rows, per_row, missing = r.randint(2, 12), r.randint(3, 15), r.randint(0, 9)
    q = f"A garden has {rows} rows of {per_row} tulips each, but {missing} tulips did not bloom. How many tulips bloomed?"
    s = f"There are {rows} * {per_row} = {rows * per_row} tulips. {rows * per_row} - {missing} = {rows * per_row - missing} bloomed."
    return q, s, rows * per_row - missing


def _ages(r: random.Random) -> tuple[str, str, int]:
    name, other = r.sample(NAMES, 2)
    age, gap, years = r.randint(4, 40), r.randint(1, 30), r.randint(1, 20)
    q = f"{name} is {age} years old and {other} is {gap} years older. How old will {other} be in {years} years?"
    s = f"{other} is {age} + {gap} = {age + gap} now. In {years} years {other} will be {age + gap} + {years} = {age + gap + years}."
    return q, s, age + gap + years


def _teams(r: random.Random) -> tuple[str, str, int]:
    teams, players, coaches = r.randint(2, 12), r.randint(5, 11), r.randint(2, 4)
    q = f"A league has {teams} teams. Each team has {players} players and {coaches} coaches. How many people are in the league?"
    s = f"Each team has {players} + {coaches} = {players + coaches} people. {teams} * {players + coaches} = {teams * (players + coaches)}."
    return q, s, teams * (players + coaches)


def _fuel(r: random.Random) -> tuple[str, str, int]:
    tank, used_per_day, days = r.randint(40, 90), r.randint(2, 6), r.randint(2, 6)
    q = f"A generator's tank holds {tank} litres. It burns {used_per_day} litres a day for {days} days. How many litres are left?"
    s = f"It burns {used_per_day} * {days} = {used_per_day * days} litres. {tank} - {used_per_day * days} = {tank - used_per_day * days} are left."
    return q, s, tank - used_per_day * days


def _boxes(r: random.Random) -> tuple[str, str, int]:
    item = r.choice(ITEMS)
    per_box, boxes = r.randint(3, 12), r.randint(2, 15)
    loose = r.randint(1, per_box - 1)
    total = per_box * boxes + loose
    q = f"A factory packs {total} {item}s into boxes of {per_box}. How many full boxes does it fill?"
    full = per_box * boxes
    s = f"{boxes} boxes hold {per_box} * {boxes} = {full}, and {total} - {full} = {loose} is less than a box. It fills {boxes} boxes."
    return q, s, boxes


# Each template is a family of its own: the curate stage keeps one template's problems in one split, so the math
# test split is made of templates that no training or validation problem uses.
TEMPLATES: tuple[Template, ...] = (
    _packs,
    _change,
    _share,
    _savings,
    _trip,
    _discount,
    _pages,
    _rows,
    _ages,
    _teams,
    _fuel,
    _boxes,
)


def word_problems(count: int, seed: int) -> Iterator[dict]:
    """`count` problems as prompt/completion rows with the integer `answer`; the completion ends `#### answer`."""
    rng = random.Random(seed)
    for index in range(count):
        template = TEMPLATES[index % len(TEMPLATES)]
        question, solution, answer = template(rng)
        yield {
            "id": f"math-{seed}-{index}",
            "prompt": question,
            "completion": f"{solution}\n#### {answer}",
            "answer": str(answer),
            "group": f"math-template:{template.__name__.lstrip('_')}",
        }
