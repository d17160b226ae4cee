"""The round-trip filter (Alberti et al. 2019): a QA run answers each generated question on its passage, and
the pair is kept where that answer matches the candidate (exact match, or character F1 at or above a
threshold, by the jglue scorer). The score is stored with the question."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from jsquad_lora.data.question import Question
from jsquad_lora.questions.local import LocalRun


@dataclass(frozen=True)
class RoundTrip:
    answer: str
    em: float
    f1: float


class RoundTripFilter(LocalRun):
    """A finished task=answer run, answering in its own decoding mode (extractive by default), batched."""

    def __init__(self, run_dir: str | Path, min_f1: float | None = None):
        super().__init__(
            run_dir,
            "answer",
            "--filter-run",
            "is a question-generation run (task=question): it cannot answer the generated questions",
            "pass a QA run (task=answer), e.g. one trained on the same labelled questions",
        )
        self.min_f1 = min_f1

    def passage_tokens(self) -> int:
        """The passage tokens one prompt of this run holds, with room for a long question (one window)."""
        return self.prompt_room("質" * 48)

    def answers(self, questions: Sequence[Question]) -> list[RoundTrip]:
        """Each question answered on its passage (its first window where it does not fit one) and scored
        against its gold answer."""
        from jsquad_lora.evaluate.scorers import jglue_question

        prompts, passages = [], []
        for q in questions:
            prompt, passage = self.run.prompt(q.context, q.question)
            prompts.append(prompt)
            passages.append(passage)
        texts: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            texts += self.run.generate(prompts[i : i + self.batch_size], passages[i : i + self.batch_size])
        out = []
        for q, text in zip(questions, texts):
            em, f1 = jglue_question(text, list(q.answers))
            out.append(RoundTrip(text, em, f1))
        return out

    def keeps(self, result: RoundTrip) -> bool:
        return result.em == 1 or (self.min_f1 is not None and result.f1 >= self.min_f1)
