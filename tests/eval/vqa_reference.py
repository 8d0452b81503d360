"""The official VQA accuracy written out plainly from its published rules, as a reference for the tests.

GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (``evaluate``, ``processPunctuation``,
``processDigitArticle``; the version since "Fixed processing answers bug", 2021). Kept apart from
``mmkit.data.vqa_answers`` on purpose: the library is checked against this transcription, not against itself.
Only the contractions the tests' answers use are listed here; the whole table is checked by
``test_vqa_answer_normalisation_follows_the_official_rules``.
"""

from __future__ import annotations

import re
from typing import Any

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ["a", "an", "the"]
SOME_CONTRACTIONS = {"dont": "don't", "isnt": "isn't", "whats": "what's"}


def trim(text: str) -> str:
    """Newlines and tabs to spaces, then strip: done to every answer, human and predicted."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def punctuation(text: str) -> str:
    """processPunctuation: a mark touching a space, or any mark when a digit-comma-digit is present, is
    removed; otherwise it becomes a space. Then periods not followed by a digit go (at most 32: the script
    passes re.UNICODE, 32, where re.sub takes its count)."""
    out = text
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or re.search(r"(\d)(,)(\d)", text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return re.sub(r"(?!<=\d)(\.)(?!\d)", "", out, count=32)


def digits_and_articles(text: str) -> str:
    """processDigitArticle: lower-case, split; number words to digits; drop articles; contractions."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(SOME_CONTRACTIONS.get(w, w) for w in words)


def question_accuracy(predicted: str, human_answers: list[str]) -> float:
    """One question: normalise only when the trimmed human answers are not all equal; then, for each
    human, ``min(1, matches among the other humans / 3)``; the mean over the humans."""
    gts = [trim(a) for a in human_answers]
    res = trim(predicted)
    if len(set(gts)) > 1:
        gts = [digits_and_articles(punctuation(a)) for a in gts]
        res = digits_and_articles(punctuation(res))
    accs = []
    for left_out in range(len(gts)):
        others = gts[:left_out] + gts[left_out + 1 :]
        matching = [a for a in others if a == res]
        accs.append(min(1, len(matching) / 3))
    return sum(accs) / len(accs)


def results_file_accuracy(results: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> float:
    """The overall accuracy (a fraction) of a results file ``[{question_id, answer}]`` against VQA v2
    annotations ``[{question_id, answers: [{answer}]}]``: every question answered once, no other."""
    by_id = {r["question_id"]: r["answer"] for r in results}
    assert len(by_id) == len(results) and set(by_id) == {a["question_id"] for a in annotations}
    scores = [question_accuracy(by_id[a["question_id"]], [x["answer"] for x in a["answers"]]) for a in annotations]
    return sum(scores) / len(scores)
