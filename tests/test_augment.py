"""Cloze questions from training passages: valid spans, reproducible, blank lengths like real answers'."""

from collections import Counter

from conftest import needs_data

from jsquad_lora.data.augment import cloze_questions, noun_spans
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split


def test_cloze_question_forms():
    from jsquad_lora.data.augment import _cloze_question

    sentence = "1958年7月24日、日本新聞協会加盟の各社は、報道管制を決定した"
    start, end = 0, len("1958年7月24日")
    assert _cloze_question(
        sentence, start, end, 2
    ) == "日本新聞協会加盟の各社は、報道管制を決定した のは何か？".replace(" ", "")
    assert (
        _cloze_question(sentence, start, end, 1)
        == _cloze_question(sentence, start, end, 0)
        == "何、日本新聞協会加盟の各社は、か。"
    )
    s2 = sentence.index("報道管制")
    assert _cloze_question(sentence, s2, s2 + 4, 1) == "1958年7月24日、日本新聞協会加盟の各社はのは何か？"
    assert _cloze_question(sentence, s2, s2 + 4, 2) == "決定したのは何か？"


def test_noun_spans_are_maximal_noun_runs():
    sentence = "梅雨は東アジアの広範囲に見られる気象現象である"
    spans = [sentence[s:e] for s, e in noun_spans(sentence)]
    assert "梅雨" in spans and "気象現象" in spans and "気象" not in spans  # the longest run, not its parts


@needs_data()
def test_cloze_questions_are_valid_reproducible_and_length_matched():
    questions = load_split(resolve_split(None, "test")).questions[:600]
    cloze = cloze_questions(questions, 6, seed=1)
    passages = {q.context for q in questions}
    assert cloze and all(c.context in passages for c in cloze)  # training passages only
    for c in cloze:
        assert c.context[c.answer_starts[0] :].startswith(c.answers[0])
        assert "何" in c.question and c.question.endswith(("か。", "のは何か？"))
    assert all(sum(c.question.endswith(end) for c in cloze) > len(cloze) / 5 for end in ("か。", "のは何か？"))
    assert cloze == cloze_questions(questions, 6, seed=1) != cloze_questions(questions, 6, seed=2)
    assert len({c.id for c in cloze}) == len(cloze)
    # drawn uniformly, about half the blanks would be 2-character nouns (9 % of real answers)
    share = Counter(len(c.answers[0]) for c in cloze)[2] / len(cloze)
    real = Counter(len(q.answers[0]) for q in questions)[2] / len(questions)
    assert share < 0.35 and real < 0.2
