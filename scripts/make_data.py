#!/usr/bin/env python3
"""Generates hone's shipped demo data under data/ from templates, deterministically.

Run from the repository root: python3 scripts/make_data.py
The output is committed; tests and recipes never need Python. Facts are general automotive
knowledge written for this project (licence: same as hone, Apache-2.0).
"""
import json
import pathlib
import random

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "cars"

# (part, what it does, a detail) -- the seed of corpus sentences and QA pairs.
FACTS = [
    ("alternator", "charges the battery while the engine runs", "it is driven by the serpentine belt"),
    ("radiator", "cools the engine coolant", "air flowing through its fins carries the heat away"),
    ("catalytic converter", "turns harmful exhaust gases into less harmful ones", "it uses platinum, palladium and rhodium"),
    ("timing belt", "keeps the camshaft and crankshaft in step", "it is usually replaced every 100,000 km"),
    ("spark plug", "ignites the air and fuel mixture in a petrol engine", "diesel engines do not use them"),
    ("clutch", "connects and disconnects the engine from the gearbox", "it is worked by the left pedal in a manual car"),
    ("differential", "lets the driven wheels turn at different speeds in a corner", "it sits between the driven wheels"),
    ("turbocharger", "forces more air into the engine using exhaust energy", "it lets a small engine make more power"),
    ("brake caliper", "squeezes the brake pads against the disc", "it is pushed by hydraulic fluid"),
    ("oil filter", "removes dirt from the engine oil", "it is changed together with the oil"),
    ("thermostat", "keeps the engine at its working temperature", "it opens when the coolant gets hot"),
    ("fuel injector", "sprays fuel into the engine", "modern engines control it electronically"),
    ("starter motor", "turns the engine over to start it", "it draws a large current from the battery"),
    ("shock absorber", "damps the bouncing of the springs", "worn ones make the car wallow over bumps"),
    ("power steering pump", "makes the steering wheel easier to turn", "many new cars use electric steering instead"),
    ("water pump", "circulates coolant through the engine", "it is often driven by the timing belt"),
    ("exhaust manifold", "collects exhaust gases from the cylinders", "it gets hotter than any other engine part"),
    ("crankshaft", "turns the up and down motion of the pistons into rotation", "it is connected to the pistons by rods"),
    ("camshaft", "opens and closes the engine valves", "its lobes push the valves open"),
    ("battery", "stores electricity to start the car", "most cars use a 12 volt battery"),
    ("wheel bearing", "lets the wheel spin with little friction", "a worn one makes a humming noise"),
    ("air filter", "stops dust from entering the engine", "a clogged one reduces power"),
    ("gearbox", "changes the ratio between engine speed and wheel speed", "automatic ones shift by themselves"),
    ("intercooler", "cools the air coming from the turbocharger", "cooler air is denser and burns better"),
]

QUESTION_TEMPLATES = [
    "What does the {part} do?",
    "What is the job of the {part} in a car?",
    "Explain what a car's {part} is for.",
]


# Sentiment: short reviews of car parts and services, positive (1) or negative (0).
POSITIVE = [
    "The new {part} works perfectly and the car feels great.",
    "Really happy with how quickly they replaced the {part}.",
    "Since the {part} was fixed the engine runs smooth and quiet.",
    "Excellent service, the {part} was checked and is in great shape.",
    "The {part} upgrade made a noticeable and welcome difference.",
]
NEGATIVE = [
    "The {part} failed again after a week, very disappointing.",
    "Terrible experience, the {part} still makes a horrible noise.",
    "They charged me twice for the {part} and it is still broken.",
    "The {part} broke on the motorway and left me stranded.",
    "Awful workmanship on the {part}, I would not go back.",
]


def sentiment(rng: random.Random) -> list:
    rows = []
    for part, _does, _detail in FACTS:
        for label, templates in [(1, POSITIVE), (0, NEGATIVE)]:
            for t in rng.sample(templates, 2):
                rows.append({"text": t.format(part=part), "label": label})
    rng.shuffle(rows)
    return rows


FOLLOW_UPS = ["And the {part}?", "What about the {part}?", "And what does the {part} do?"]


def chats(rng: random.Random) -> list:
    """Two-turn conversations (OpenAI `messages`): a question, then a follow-up about another
    part that only makes sense after the first turn."""
    rows = []
    for k, (part, does, _detail) in enumerate(FACTS):
        for other in rng.sample([f for j, f in enumerate(FACTS) if j != k], 4):
            rows.append({"messages": [
                {"role": "system", "content": "You are a concise car-maintenance assistant."},
                {"role": "user", "content": rng.choice(QUESTION_TEMPLATES).format(part=part)},
                {"role": "assistant", "content": f"The {part} {does}."},
                {"role": "user", "content": rng.choice(FOLLOW_UPS).format(part=other[0])},
                {"role": "assistant", "content": f"The {other[0]} {other[1]}."},
            ]})
    rng.shuffle(rows)
    return rows


def main() -> None:
    rng = random.Random(1234)
    OUT.mkdir(parents=True, exist_ok=True)
    corpus = []
    for part, does, detail in FACTS:
        corpus.append({"text": f"The {part} {does}. In most cars {detail}."})
        corpus.append({"text": f"A mechanic will tell you that the {part} {does}; {detail}."})
    rng.shuffle(corpus)
    qa, heldout = [], []
    for k, (part, does, _detail) in enumerate(FACTS):
        answer = f"The {part} {does}."
        questions = [t.format(part=part) for t in QUESTION_TEMPLATES]
        # The last template of every fourth fact is held out for evaluation only.
        for j, q in enumerate(questions):
            row = {"question": q, "answer": answer}
            (heldout if k % 4 == 0 and j == len(questions) - 1 else qa).append(row)
    write(OUT / "corpus.jsonl", corpus)
    write(OUT / "qa.jsonl", qa)
    write(OUT / "qa_heldout.jsonl", heldout)
    write(OUT / "reviews.jsonl", sentiment(random.Random(99)))
    write(OUT / "chat.jsonl", chats(random.Random(7)))


def write(path: pathlib.Path, rows: list) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(rows)} rows")


if __name__ == "__main__":
    main()
