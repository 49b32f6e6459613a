#!/usr/bin/env python3
"""A GRPO/PPO reward program (`reward: { command: [python3, examples/arithmetic_verifier.py] }`,
the path relative to the recipe's directory): 1 when an answer's final number equals the row's
`answer`, else 0. It reads answers the way hone's built-in `math: answer` verifier does
(src/stages/verifiers.rs), so the two give the same scores, and so train the same model.

The protocol: hone writes one JSON object a line to stdin (the prompt row's columns, then
`prompt` and `response`, the answer to score) and reads one number a line from stdout, in
order. A crash, a time-out or a line that is not a number fails the stage.

The final result of a text: the last \\boxed{...}, else what follows the last `####`, else the
last number (after any `</think>`). Numbers: integers and decimals with a sign and thousands
commas, `a/b` and `\\frac{a}{b}`, optional `$` around, a trailing `%` (divides by 100) or
full stop. Equal within 1e-9 relative.
"""
import json
import sys


def braced(s: str):
    """The contents of `{...}` at the start of `s`, braces balanced."""
    if not s.startswith("{"):
        return None
    depth = 1
    for i, c in enumerate(s[1:]):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth == 0:
            return s[1 : 1 + i]
    return None


def number(s: str):
    s = s.strip().rstrip(".").strip().strip("$").strip()
    for prefix in ("\\frac", "\\dfrac", "\\tfrac"):
        if s.startswith(prefix):
            rest = s[len(prefix) :]
            num = braced(rest)
            den = braced(rest[len(num) + 2 :]) if num is not None else None
            a, b = (number(num), number(den)) if den is not None else (None, None)
            return None if a is None or b is None else a / b
    for suffix in ("\\%", "%"):
        if s.endswith(suffix):
            p = number(s[: -len(suffix)])
            return None if p is None else p / 100.0
    if "/" in s:
        a, b = s.split("/", 1)
        d = number(b)
        if d is None or d == 0.0:
            return None
        n = number(a)
        return None if n is None else n / d
    plain = s.replace(",", "")
    body = plain.lstrip("-+")
    ascii_digit = lambda c: "0" <= c <= "9"
    if not plain or not all(ascii_digit(c) or c == "." for c in body) or not any(map(ascii_digit, plain)):
        return None
    try:
        return float(plain)
    except ValueError:
        return None


def numbers(text: str):
    """Every number in running text, in order."""
    out, i, n = [], 0, len(text)
    digit = lambda j: j < n and "0" <= text[j] <= "9"
    while i < n:
        c = text[i]
        signed = c in "-+" and (digit(i + 1) or (i + 1 < n and text[i + 1] == ".")) and (
            i == 0 or not text[i - 1].isalnum()
        )
        starts = digit(i) or (c == "." and digit(i + 1))
        if not signed and not starts:
            i += 1
            continue
        begin = i
        i += 1
        while i < n:
            c = text[i]
            if not (digit(i) or (c in ".,/" and digit(i + 1)) or c == "%"):
                break
            i += 1
            if c == "%":
                break
        v = number(text[begin:i])
        if v is not None:
            out.append(v)
    return out


def final_number(text: str):
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    start = text.rfind("\\boxed{")
    if start >= 0:
        boxed = braced(text[start + len("\\boxed") :])
        if boxed is not None:
            return number(boxed.strip())
    if "####" in text:
        found = numbers(text.rsplit("####", 1)[1])
        return found[0] if found else None
    found = numbers(text)
    return found[-1] if found else None


def score(response: str, reference: str) -> float:
    a, r = final_number(response), final_number(reference)
    if a is None or r is None:
        return 0.0
    return 1.0 if abs(a - r) <= 1e-9 * max(abs(a), abs(r), 1.0) else 0.0


for line in sys.stdin:
    row = json.loads(line)
    print(score(row["response"], row["answer"]))
