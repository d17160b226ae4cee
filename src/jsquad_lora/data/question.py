"""The data every stage reads: a question with its passage and gold answers, and a split of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLIT_NAMES = ("train", "valid", "test")


@dataclass(frozen=True)
class Question:
    """One JSQuAD question. `context` is the passage body, without the `<title> [SEP] ` prefix;
    `answer_starts` are character offsets into that body (as given, shifted by the prefix). No answers:
    the passage does not answer the question (SQuAD v2's unanswerable questions); the model should abstain."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass(frozen=True)
class Split:
    path: Path
    questions: tuple[Question, ...]
    #: "qid#k" for each gold answer whose answer_start does not point at its text
    start_mismatches: tuple[str, ...]
    #: ids of the questions whose answer occurs more than once in its context (rows without answer_start:
    #: the first occurrence was taken)
    ambiguous_answers: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.questions)

    def by_id(self) -> dict[str, Question]:
        return {q.id: q for q in self.questions}


def as_question_task(question: Question) -> Question | None:
    """`question` the other way round for task=question: the prompt gives the passage and the answer (held in
    `question`), the target is the human question (the only gold "answer", at no passage offset: -1). None for a
    question without an answer (nothing to ask about)."""
    if not question.answers:
        return None
    return Question(question.id, question.title, question.context, question.answers[0], (question.question,), (-1,))
