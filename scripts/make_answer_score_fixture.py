"""Reference values for hone's answer scores (src/stages/answer_scores.rs): ROUGE-L F-measure
from Google's rouge-score (no stemming) and token F1 from the SQuAD v1.1 evaluation script.

    pip install rouge-score && python scripts/make_answer_score_fixture.py
writes tests/fixtures/answer_scores.json.
"""

import collections
import json
import re
import string

from rouge_score import rouge_scorer


# SQuAD v1.1's evaluate-v1.1.py, as published.
def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    if not prediction_tokens and not ground_truth_tokens:
        return 1.0
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


CASES = [
    ("The alternator charges the battery while the engine runs.",
     "The alternator charges the battery while the engine runs."),
    ("It charges the battery.", "The alternator charges the battery while the engine runs."),
    ("The battery is charged by the alternator.", "The alternator charges the battery."),
    ("Red red red", "red blue"),
    ("the the the", "The cat sat on the mat"),
    ("A cat sat on a mat, then the cat slept.", "The cat sat on the mat."),
    ("Change the oil every 5000 miles or 6 months.", "Every 5,000 miles or six months."),
    ("Nothing in common here", "Completely different words"),
    ("police killed the gunman", "the gunman police killed"),
    ("", "something"),
    ("What's the car's ideal tyre pressure? It's 32 psi.", "The ideal pressure is 32 psi, what's written on the door."),
    ("Brakes: check pads, rotors and fluid.", "Check the brake pads, the rotors, and the fluid level."),
]

rows = []
scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
for answer, reference in CASES:
    rouge = scorer.score(reference, answer)["rougeL"].fmeasure
    rows.append({
        "answer": answer,
        "reference": reference,
        "rouge_l": rouge,
        "token_f1": f1_score(answer, reference),
    })
with open("tests/fixtures/answer_scores.json", "w") as f:
    json.dump(rows, f, indent=1)
    f.write("\n")
print(json.dumps(rows, indent=1))
