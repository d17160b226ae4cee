"""The published JSQuAD scores a report shows beside a run's (SPEC §2), and which of them compare."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceScore:
    """One published JSQuAD dev-set score (percent); `f1` is None where none was published."""

    system: str
    setting: str
    em: float
    f1: float | None
    source: str

    @property
    def scorer(self) -> str:
        """Which scorer produced the number, in our scorer names where one matches."""
        if self.source.startswith("JGLUE README"):
            return "jglue"
        if "jp-stable" in self.source:
            return "stability"
        return "unspecified"


REFERENCE_SCORES: tuple[ReferenceScore, ...] = (
    ReferenceScore("Human", "—", 87.1, 94.4, "JGLUE README (JGLUE scorer)"),
    ReferenceScore("Waseda RoBERTa large (s512)", "fine-tuned", 91.8, 96.3, "JGLUE README"),
    ReferenceScore("NICT BERT base", "fine-tuned", 89.7, 94.7, "JGLUE README"),
    ReferenceScore("Tohoku BERT large", "fine-tuned", 88.0, 94.6, "JGLUE README"),
    ReferenceScore("Tohoku BERT base", "fine-tuned", 87.1, 94.1, "JGLUE README"),
    ReferenceScore("ChatGPT (gpt-3.5-turbo)", "few-shot", 81.8, None, 'fintan.jp "ChatGPT vs BERT"'),
    ReferenceScore("japanese-stablelm-base-alpha-7b", "3-shot", 70.62, 79.26, "jp-stable harness results"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "2-shot, prompt 0.4", 52.63, 64.39, "jp-stable harness results"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "3-shot (v1.1)", 51.8, None, "as cited by the write-up"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "zero-shot, seed prompt", 13.2, None, "the write-up"),
    ReferenceScore("rinna 3.6b-instruction-ppo", "LoRA, seed recipe", 64.7, None, "the write-up"),
)
#: the report's note where a run on the tiny model is in it (and only there)
NOT_COMPARABLE = (
    "Offline tiny-model runs (model `tiny`: a few-layer GPT-NeoX built from scratch with a character "
    "tokenizer) are NOT comparable with the reference models; they exist only to show that the "
    "pipeline learns (compare their before and after scores)."
)
#: the report's note on every report
SCORES_NOTE = (
    "Reference numbers are as published, with the scorer each source used; our numbers are ours, by "
    "generation on the dev set."
)
