"""What tuning cost general language modelling: per-token perplexity on Japanese text that is not QA, the
evaluation split's passages without their questions, before and after tuning (metrics.json's
`language_modelling`).

Hand-written around one forward pass a passage: transformers computes the loss; the passages are the first
`PASSAGES` distinct ones of the evaluated questions, in data order, each cut to `model.max_length` tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

from jsquad_lora.data.question import Question

#: passages read: enough for a stable number (each is a few hundred tokens), seconds on 2 cores
PASSAGES = 64


def passage_perplexity(model, tokenizer, questions: Sequence[Question], max_length: int) -> dict:
    """exp(mean negative log-likelihood per predicted token) over the passages (with the tokenizer's BOS)."""
    import torch

    from jsquad_lora.generate.greedy import inference_mode

    passages = list(dict.fromkeys(q.context for q in questions))[:PASSAGES]
    total, tokens = 0.0, 0
    with inference_mode(model) as device:
        for text in passages:
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            if len(ids) < 2:
                continue
            input_ids = torch.tensor([ids], device=device)
            loss = model(input_ids=input_ids, labels=input_ids).loss.float().item()
            total += loss * (len(ids) - 1)
            tokens += len(ids) - 1
    return {
        "text": "the evaluation passages, without questions",
        "passages": len(passages),
        "tokens": tokens,
        "perplexity": math.exp(total / tokens) if tokens else None,
    }
