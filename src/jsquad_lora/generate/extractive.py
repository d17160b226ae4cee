"""Extractive decoding: greedy decoding restricted to spans of each row's passage, and an output
layer that computes only the tokens a row can pick.

Written here because no library constrains a row to substrings of its own passage.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from transformers import LogitsProcessor

from jsquad_lora.generate.vocab import decode, token_vocab
from jsquad_lora.model.layers import output_layer_replaced


def _complete_text(answer: bytes) -> bool:
    """At least one visible character, and no character cut in the middle."""
    try:
        return bool(answer.decode().strip())
    except UnicodeDecodeError:
        return False


class ExtractiveLogitsProcessor(LogitsProcessor):
    """Greedy decoding restricted to spans of each row's passage.

    Policy, per row: the answer text (the generated tokens' texts joined, leading whitespace
    stripped) must stay a substring of the passage after every token; the first token may carry
    leading whitespace (`▁答`, ` 答` after `システム: `), later tokens' whitespace must be in the
    passage. EOS, and any stop string that is a single token, are allowed once the answer has at
    least one complete visible character; tokens containing a stop string are never allowed
    otherwise. If no token is allowed, EOS is forced. With `allow_empty`, an end token is also allowed as the
    very first token: the model abstains (the passage does not answer the question).

    Candidates come from a per-tokenizer byte index (`TokenVocab`), so partial-character tokens work.
    The chosen (arg-max) token is then checked on real decoded text: `decode(generated + [token])`,
    stripped, must be in the passage (a trailing half character aside), else the next best
    allowed token is tried, so the answer is exactly a span whatever the tokenizer's decoder does.
    """

    def __init__(
        self,
        tokenizer,
        passages: Sequence[str],
        prompt_length: int,
        end_ids: set[int],
        eos_id: int,
        stop_strings: Sequence[str],
        allow_empty: bool = False,
    ) -> None:
        self.tokenizer, self.vocab = tokenizer, token_vocab(tokenizer)
        self.allow_empty = allow_empty
        self.passages, self.prompt_length = list(passages), prompt_length
        self.end_ids, self.eos_id = frozenset(end_ids), eos_id
        self.passage_bytes = [p.encode() for p in self.passages]
        self.banned = self.end_ids | self.vocab.containing(tuple(stop_strings))
        self.openers = [sorted(self.vocab.first_pieces(p) - self.banned) for p in self.passage_bytes]

    def candidates(self) -> list[int]:
        """Every token any row may ever choose (its passage's pieces, the end tokens, EOS): the only
        logits this processor can leave finite, so the LM head need compute no others."""
        ids = set(self.end_ids) | {self.eos_id}
        for row in self.openers:
            ids.update(row)
        return sorted(ids)

    def _allowed(self, row: int, generated: list[int]) -> list[int] | None:
        """Allowed next tokens; None for a finished row (after EOS / stop token / padding)."""
        pieces = [self.vocab.pieces[i] if i < len(self.vocab.pieces) else None for i in generated]
        if any(p is None or i in self.end_ids for i, p in zip(generated, pieces)):
            return None
        answer = b"".join(pieces).lstrip()  # type: ignore[arg-type]
        if not answer:  # the first token (or only whitespace so far); an end token first is an abstention
            return self.openers[row] + sorted(self.end_ids) if self.allow_empty and not generated else self.openers[row]
        allowed = sorted(self.vocab.next_pieces(self.passage_bytes[row], answer) - self.banned)
        return allowed + sorted(self.end_ids) if _complete_text(answer) else allowed

    def _text_ok(self, row: int, ids: list[int]) -> bool:
        return decode(self.tokenizer, ids).lstrip().rstrip("\ufffd") in self.passages[row]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids[:, self.prompt_length :].tolist()
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        active = []
        for r, generated in enumerate(rows):
            allowed = self._allowed(r, generated)
            if allowed is None:
                mask[r] = True  # finished: generate pads this row anyway
                continue
            allowed = [i for i in allowed if i < scores.shape[1]] or [self.eos_id]
            mask[r, allowed] = True
            active.append(r)
        scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
        best = scores.argmax(-1).tolist()
        for r in active:  # exact check of the token greedy decoding will pick
            choice = best[r]
            while choice not in self.end_ids and not self._text_ok(r, rows[r] + [choice]):
                scores[r, choice] = float("-inf")
                if bool(torch.isneginf(scores[r]).all()):
                    scores[r, self.eos_id] = 0.0
                    break
                choice = int(scores[r].argmax())
        return scores


class CandidateHead(torch.nn.Module):
    """An output layer that computes the logits of `ids` only; every other logit is -inf.

    In extractive decoding a row can only ever pick a token of its passage (a few thousand of
    Gemma's 262k): the full head costs more than the whole body of a 270M model per token."""

    def __init__(self, head: torch.nn.Module, ids: list[int]) -> None:
        super().__init__()
        self.vocab = head.weight.shape[0]
        self.ids = torch.tensor(ids, device=head.weight.device)
        self.weight = head.weight[self.ids]
        self.bias = None if getattr(head, "bias", None) is None else head.bias[self.ids]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden.contiguous(), self.weight, self.bias)  # see _inference
        out = logits.new_full((*logits.shape[:-1], self.vocab), float("-inf"))
        return out.index_copy_(-1, self.ids, logits)


@contextmanager
def head_restricted_to(model, ids: list[int] | None) -> Iterator[None]:
    """The model's output layer computes only `ids` inside the block (no change when None, or
    where the output layer is not a plain linear layer)."""
    with output_layer_replaced(
        model, lambda head: CandidateHead(head, ids) if ids is not None and type(head) is torch.nn.Linear else None
    ):
        yield
