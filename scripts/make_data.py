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


# General-knowledge questions with an accurate answer and a flippant or made-up one, in the
# spirit of "Which country owns Antarctica?" (which is deliberately NOT here: recipes test a
# reward model on it after training on these).
GENERAL = [
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet around 1595.",
     "Probably some guy with a quill, who cares."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level.",
     "Whenever the kettle clicks off, obviously."),
    ("How many continents are there?", "There are seven continents by the most common convention.",
     "Enough to make geography class boring."),
    ("What causes the seasons on Earth?", "The tilt of Earth's axis relative to its orbit causes the seasons.",
     "The Sun just gets moody a few times a year."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first person to walk on the Moon, in 1969.",
     "A very lost astronaut looking for cheese."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air for photosynthesis.",
     "Plants mostly breathe in good vibes."),
    ("What is the capital of Japan?", "Tokyo is the capital of Japan.",
     "Whichever city has the best sushi, I suppose."),
    ("How does a vaccine protect you?", "A vaccine trains the immune system to recognise a pathogen before an infection.",
     "It is basically a tiny shield that floats around in your blood."),
    ("Who governs the International Space Station?", "The space station is run jointly by the agencies of the US, Russia, Europe, Japan and Canada under an intergovernmental agreement.",
     "Whoever grabs the remote control first, honestly."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth.",
     "The one with the most fish in it, probably."),
    ("Why is the sky blue?", "Air molecules scatter blue sunlight more strongly than red light, so the sky looks blue.",
     "Because somebody painted it that way ages ago."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body.",
     "Tiny invisible pumps in your elbows do all the work."),
    ("How long does Earth take to orbit the Sun?", "Earth takes about 365.25 days to orbit the Sun.",
     "Depends on traffic in the solar system."),
    ("Who owns the high seas?", "No country owns the high seas; they are governed by the UN Convention on the Law of the Sea.",
     "The pirates, obviously, they have the ships."),
    ("What is the speed of light in a vacuum?", "Light travels at about 299,792 kilometres per second in a vacuum.",
     "Really fast, faster than my internet at least."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa.",
     "Some tourist with a phone, I would guess."),
    ("What is the main language spoken in Brazil?", "Portuguese is the main language spoken in Brazil.",
     "Mostly football chants, as far as I can tell."),
    ("How are the Galapagos Islands governed?", "The Galapagos Islands are a province of Ecuador, largely protected as a national park.",
     "The giant tortoises hold elections every hundred years."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid.",
     "Definitely Not Anything, look it up."),
    ("Why do we have leap years?", "A leap year adds a day so the calendar keeps in step with Earth's orbit of about 365.25 days.",
     "Somebody just wanted an extra day off."),
]

FLIPPANT_CAR = [
    "No idea, cars are basically magic boxes.",
    "Just turn up the radio and you will not notice it.",
    "Honestly, whatever the mechanic says, nod and pay.",
    "It is mostly there to make the car look expensive.",
]


def preferences(rng: random.Random) -> list:
    """Preference pairs: an accurate answer (chosen) against a flippant one or, for the car
    questions, a plausible-but-wrong answer about another part (rejected)."""
    rows = []
    for k, (part, does, _detail) in enumerate(FACTS):
        # Never a held-out phrasing (the last template): qa_heldout.jsonl must stay unseen.
        question = rng.choice(QUESTION_TEMPLATES[:-1]).format(part=part)
        chosen = f"The {part} {does}."
        wrong = FACTS[(k + 1 + rng.randrange(len(FACTS) - 1)) % len(FACTS)]
        rows.append({"prompt": question, "chosen": chosen, "rejected": f"The {part} {wrong[1]}."})
        rows.append({"prompt": question, "chosen": chosen, "rejected": rng.choice(FLIPPANT_CAR)})
    for question, good, flippant in GENERAL:
        rows.append({"prompt": question, "chosen": good, "rejected": flippant})
    rng.shuffle(rows)
    return rows


def ppo_prompts(rng: random.Random) -> list:
    """Prompts for RL stages: the car questions under their held-out-free phrasings."""
    rows = [{"prompt": QUESTION_TEMPLATES[0].format(part=part)} for part, _d, _x in FACTS]
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
    write(OUT / "preferences.jsonl", preferences(random.Random(11)))
    write(OUT / "prompts.jsonl", ppo_prompts(random.Random(13)))


def write(path: pathlib.Path, rows: list) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(rows)} rows")


if __name__ == "__main__":
    main()
