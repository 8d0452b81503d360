"""VQA answers as the official VQA evaluation reads them: normalisation, soft scores, the vocabulary.

The rules (Antol et al. 2015 and the VQA v2 evaluation script, ``vqaEval.py``; recorded in
``docs/EVALUATION.md``, "VQA answers"), applied in this order:

1. newlines and tabs become spaces, the ends are trimmed;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
   space in the answer or the answer holds a digit-comma-digit group anywhere, else replaced by a space;
   then every period not followed by a digit is deleted (so ``2.5`` keeps its point), at most 32 of them
   (the script passes ``re.UNICODE`` where ``re.sub`` takes its count);
3. words (lower-cased, split on whitespace): number words ``none``/``zero`` .. ``ten`` become digits,
   the articles ``a``, ``an``, ``the`` are dropped, and the apostrophe-less spellings of contractions
   get their apostrophes back (``dont`` -> ``don't``; the script's table, quirks kept: its capitalised
   keys never match a lower-cased word, and it maps ``somebody'd`` to ``somebodyd``).

``"Two dogs."`` -> ``"2 dogs"``; ``"the cat's toy"`` -> ``"cat's toy"``; ``"yes!"`` -> ``"yes"``.

An answer's accuracy is ``min(1, matches / 3)`` averaged over the leave-one-out subsets of the human
answers (:func:`vqa_answer_score`): with VQA v2's ten answers that is 0.3, 0.6, 0.9, 1 for an answer
given by 1, 2, 3, 4+ annotators. The training targets (:func:`vqa_soft_scores`) count matches among the
normalised answers. The official evaluation (:func:`vqa_official_score`, :func:`vqa_official_accuracy`)
normalises only when the humans disagree: a question whose ten answers are the same string (after step 1)
is scored on raw strings, so ``"t shirt"`` scores 0 against ten ``"t-shirt"``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmkit.utils.errors import InputError

_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # the script's "(?!<=\d)(\.)(?!\d)": its first group is a no-op lookahead
_NUMBERS = {
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
_ARTICLES = frozenset(("a", "an", "the"))
# The evaluation script's contraction table, as "spelling>replacement" pairs.
_CONTRACTIONS = dict(
    pair.split(">")
    for pair in """
    aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn't've
    couldnt've>couldn't've didnt>didn't doesnt>doesn't dont>don't hadnt>hadn't hadnt've>hadn't've
    hadn'tve>hadn't've hasnt>hasn't havent>haven't hed>he'd hed've>he'd've he'dve>he'd've hes>he's
    howd>how'd howll>how'll hows>how's Id've>I'd've I'dve>I'd've Im>I'm Ive>I've isnt>isn't itd>it'd
    itd've>it'd've it'dve>it'd've itll>it'll let's>let's maam>ma'am mightnt>mightn't mightnt've>mightn't've
    mightn'tve>mightn't've mightve>might've mustnt>mustn't mustve>must've neednt>needn't notve>not've
    oclock>o'clock oughtnt>oughtn't ow's'at>'ow's'at 'ows'at>'ow's'at 'ow'sat>'ow's'at shant>shan't
    shed've>she'd've she'dve>she'd've she's>she's shouldve>should've shouldnt>shouldn't
    shouldnt've>shouldn't've shouldn'tve>shouldn't've somebody'd>somebodyd somebodyd've>somebody'd've
    somebody'dve>somebody'd've somebodyll>somebody'll somebodys>somebody's someoned>someone'd
    someoned've>someone'd've someone'dve>someone'd've someonell>someone'll someones>someone's
    somethingd>something'd somethingd've>something'd've something'dve>something'd've
    somethingll>something'll thats>that's thered>there'd thered've>there'd've there'dve>there'd've
    therere>there're theres>there's theyd>they'd theyd've>they'd've they'dve>they'd've theyll>they'll
    theyre>they're theyve>they've twas>'twas wasnt>wasn't wed've>we'd've we'dve>we'd've weve>we've
    werent>weren't whatll>what'll whatre>what're whats>what's whatve>what've whens>when's whered>where'd
    wheres>where's whereve>where've whod>who'd whod've>who'd've who'dve>who'd've wholl>who'll whos>who's
    whove>who've whyll>why'll whyre>why're whys>why's wont>won't wouldve>would've wouldnt>wouldn't
    wouldnt've>wouldn't've wouldn'tve>wouldn't've yall>y'all yall'll>y'all'll y'allll>y'all'll
    yall'd've>y'all'd've y'alld've>y'all'd've y'all'dve>y'all'd've youd>you'd youd've>you'd've
    you'dve>you'd've youll>you'll youre>you're youve>you've
    """.split()
)


def _trim(answer: Any) -> str:
    """Step 1 alone: newlines and tabs become spaces, the ends are trimmed."""
    return str(answer).replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: Any) -> str:
    """One answer in the official evaluation's normal form (module docstring): ``"Two dogs."`` -> ``"2 dogs"``."""
    text = _trim(answer)
    delete = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        out = out.replace(p, "" if delete or f"{p} " in text or f" {p}" in text else " ")
    out = _PERIOD.sub("", out, count=32)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_answer_score(matches: int, answers: int) -> float:
    """The official accuracy of an answer that ``matches`` of ``answers`` humans gave: ``min(1, m / 3)``
    averaged over the ``answers`` subsets that leave one human out."""
    if answers <= 0:
        return 0.0
    hit = matches * min(1.0, (matches - 1) / 3)  # subsets without one of the matching humans
    miss = (answers - matches) * min(1.0, matches / 3)  # subsets without one of the others
    return (hit + miss) / answers


def vqa_official_score(predicted: Any, answers: Sequence[Any]) -> float:
    """One question's accuracy as the official evaluation (``vqaEval.py``) computes it.

    Both the predicted answer and the human answers are trimmed (step 1). When the trimmed human answers
    are not all the same string, every one of them and the predicted answer are normalised (steps 2 and 3);
    when they are all the same, nothing more is done and the strings are compared as they are (a unanimous
    ``"T-shirt"`` is matched only by ``"T-shirt"``). The score is :func:`vqa_answer_score` of the number of
    human answers equal to the predicted one.

    Args:
        predicted: the answer given (a string). answers: the question's human answers (VQA v2: 10 strings,
            or annotation dicts ``{"answer": ...}``), as released.
    """
    given = [_trim(a["answer"] if isinstance(a, dict) else a) for a in _as_list(answers)]
    if not given:
        raise InputError("a VQA question needs at least one human answer to be scored")
    guess = _trim(predicted)
    if len(set(given)) > 1:
        given, guess = [normalize_answer(a) for a in given], normalize_answer(guess)
    return vqa_answer_score(given.count(guess), len(given))


def vqa_official_accuracy(answers: Mapping[int, Any], questions: Mapping[int, Sequence[Any]]) -> float:
    """The official VQA accuracy (a fraction, not percent): the mean over ``questions`` of
    :func:`vqa_official_score`.

    Args:
        answers: the predicted answer string by question id (a results file's ``{question_id: answer}``).
        questions: each question's human answers by question id, as released (``answers[].answer``).

    Raises:
        InputError: ``answers`` and ``questions`` do not name the same questions (the official evaluation
            refuses such a results file too).
    """
    missing, extra = set(questions) - set(answers), set(answers) - set(questions)
    if missing or extra or not questions:
        raise InputError(
            f"VQA accuracy needs one answer per question: {len(missing)} question(s) without an answer "
            f"(e.g. {sorted(missing)[:3]}), {len(extra)} answer(s) to unknown questions (e.g. {sorted(extra)[:3]})"
        )
    return sum(vqa_official_score(answers[q], given) for q, given in questions.items()) / len(questions)


def vqa_soft_scores(answers: Any, vocab: Sequence[str]) -> list[float]:
    """Soft targets over an answer vocabulary.

    Args:
        answers: the human answers to one question (a list of strings; VQA v2 has 10, or a list of
            VQA v2 annotation dicts ``{"answer": ...}``), or a dict ``{answer: score}`` of precomputed scores.
        vocab: the answer classes (normalised).

    Returns:
        ``len(vocab)`` floats: each answer's official accuracy (:func:`vqa_answer_score`) at its class;
        answers outside the vocabulary are dropped.
    """
    scores = [0.0] * len(vocab)
    for i, v in vqa_sparse_scores(answers, {a: i for i, a in enumerate(vocab)}).items():
        scores[i] = v
    return scores


def vqa_sparse_scores(answers: Any, index: dict[str, int]) -> dict[int, float]:
    """:func:`vqa_soft_scores` as ``{class id: score}`` for the non-zero classes, ``index`` mapping each
    vocabulary answer to its id (what a 400k-question split keeps in memory instead of dense rows)."""
    if isinstance(answers, dict):
        found = ((index.get(normalize_answer(a)), float(v)) for a, v in answers.items())
        return {i: v for i, v in found if i is not None}
    given = [normalize_answer(a["answer"] if isinstance(a, dict) else a) for a in _as_list(answers)]
    return {index[a]: vqa_answer_score(m, len(given)) for a, m in Counter(given).items() if a in index}


def _as_list(answers: Any) -> list[Any]:
    return [answers] if isinstance(answers, str) else list(answers)


def build_answer_vocab(answer_lists: Iterable[Any], size: int = 3129) -> tuple[str, ...]:
    """The ``size`` most frequent normalised answers (ties broken by name) over ``answer_lists`` (one
    entry per question: its answers, as :func:`vqa_soft_scores` takes them). 3,129 is the usual VQA v2
    vocabulary: the answers given at least 9 times over train + val (Teney et al. 2018)."""
    counts: Counter[str] = Counter()
    for answers in answer_lists:
        items = answers if isinstance(answers, dict) else _as_list(answers)
        counts.update(normalize_answer(a["answer"] if isinstance(a, dict) else a) for a in items)
    return tuple(sorted(counts, key=lambda a: (-counts[a], a))[:size])
