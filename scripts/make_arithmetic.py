#!/usr/bin/env python3
"""Writes data/arithmetic/{train,heldout}.jsonl: word problems on two or three small numbers
(one or two operations, half of each), for GRPO with the `math` verifier (issue 32's
arithmetic recipe, not shipped yet: see the progress note) and `cargo bench --bench rollout`.

Each row: `prompt` (the problem and what form the answer takes), `answer` (the result, an
integer, as text), `solution` (the calculation in one line, then "The answer is N."; for
supervised warm-up), `numbers` (the operands, in order). A problem is a start amount, then one
or two changes (gains, losses, or a doubling/tripling), e.g. "Mia has 4 marbles. She finds 3
more, then gives away 2. How many marbles does Mia have now?" (5). Results stay between 0 and
40.

Train and held-out are split by the numbers used: a problem is held out when its operand
tuple is, and a held-out tuple never appears in training under any wording, so held-out
accuracy measures arithmetic, not recall of seen problems.

Deterministic (seeded); run with no arguments: python3 scripts/make_arithmetic.py
"""
import hashlib
import itertools
import json
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "data/arithmetic"
TRAIN_ROWS, HELDOUT_ROWS = 200, 100
HELDOUT_SHARE = 5  # one operand tuple in 5 is held out

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Ivy", "Sam", "Lena", "Ravi"]
THINGS = ["marbles", "apples", "stickers", "coins", "books", "shells", "pencils", "cards"]
# (verb phrase, operation): `n` is the operand.
GAINS = ["finds {n} more", "buys {n} more", "gets {n} more from a friend", "wins {n} more"]
LOSSES = ["gives away {n}", "loses {n}", "sells {n}", "gives {n} to a friend"]
TIMES = {2: "doubles them", 3: "triples them"}
INSTRUCTION = "Show the calculation in one line, then end with \"The answer is N.\""


def held_out(numbers: tuple) -> bool:
    digest = hashlib.sha256(repr(numbers).encode()).digest()
    return digest[0] % HELDOUT_SHARE == 0


def problem(rng: random.Random, numbers: tuple, ops: tuple) -> dict | None:
    value = numbers[0]
    steps, work = [], []
    for n, op in zip(numbers[1:], ops):
        before = value
        if op == "+":
            value += n
            steps.append(rng.choice(GAINS).format(n=n))
        elif op == "-":
            if n > value:
                return None
            value -= n
            steps.append(rng.choice(LOSSES).format(n=n))
        else:
            if n not in TIMES:
                return None
            value *= n
            steps.append(TIMES[n])
        work.append(f"{before} {'x' if op == '*' else op} {n} = {value}")
    if not 0 <= value <= 40:
        return None
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    changes = steps[0] if len(steps) == 1 else f"{steps[0]}, then {steps[1]}"
    text = (
        f"{name} has {numbers[0]} {thing}. {name} {changes}. "
        f"How many {thing} does {name} have now? {INSTRUCTION}"
    )
    solution = f"{', then '.join(work)}. The answer is {value}."
    return {"prompt": text, "answer": str(value), "solution": solution, "numbers": list(numbers)}


def main() -> None:
    rng = random.Random(2026)
    candidates = []
    for count in (2, 3):
        for numbers in itertools.product(range(1, 10), repeat=count):
            for ops in itertools.product("+-*", repeat=count - 1):
                candidates.append((numbers, ops))
    rng.shuffle(candidates)
    # Half the problems take one operation, half two (there are far more of the second kind).
    train, heldout = [], []
    for numbers, ops in candidates:
        rows = heldout if held_out(numbers) else train
        limit = HELDOUT_ROWS if rows is heldout else TRAIN_ROWS
        if sum(len(r["numbers"]) == len(numbers) for r in rows) >= limit // 2:
            continue
        row = problem(rng, numbers, ops)
        if row is not None:
            rows.append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in [("train", train), ("heldout", heldout)]:
        path = OUT / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path.relative_to(ROOT)}: {len(rows)} problems")
    assert not {tuple(r["numbers"]) for r in train} & {tuple(r["numbers"]) for r in heldout}


if __name__ == "__main__":
    main()
