"""Span decoding: extractive decoding finds the place, then the passage spans around its answer are ranked by
their log-probability, end of the answer included.

Why: a third of the default model's wrong answers are boundary errors, the right place with the wrong
length (`中国大陸` for `シベリアから中国大陸にかけて`): greedy decoding commits to its first token and stops
at the first likely end, and never compares whole answers.

Candidates: each answer start is the greedy answer's start or a word boundary near it (`start_candidates`:
Japanese has no spaces, so a boundary is a change of script, a punctuation mark, or a point between two
hiragana, where particles run together). From each start, the passage text up to REACH characters past the
greedy answer's end (never across a sentence end) is one teacher-forced branch of tokens t1..tn; every prefix
t1..tk whose text is whole characters is an answer, and its score is

    log P(t1..tk | prompt) + log P(an end token | prompt, t1..tk),

the probability that generation gives exactly that answer and stops. The greedy answer's own tokens are one
branch too, so the winner is never less likely than the greedy answer. Probabilities are over the tokens that
occur in the passage plus the end tokens (the distribution extractive decoding chooses from), which keeps
the output layer to a few thousand of Gemma's 262k words.

The questions of one passage run as one row shaped as a tree (`_tree_row`): the passage's prompt prefix once,
each question's rest of the prompt after it, each branch after its question's, every token seeing only its
ancestors at the positions it has alone (training's shared-prefix mask, one level deeper). A passage's
questions thus cost about one more prefill of its prompt. Written here: no library ranks passage spans by a
causal LM's likelihood.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

import torch

from jsquad_lora.encoding.attention import masks_by_layer_type, sliding_window
from jsquad_lora.encoding.tokens import answer_ids
from jsquad_lora.generate.vocab import decode, token_vocab
from jsquad_lora.model.layers import unwrapped

#: word boundaries tried before the greedy answer's start (at most REACH characters away) and inside it
OUTWARD, INWARD = 3, 1
#: characters past the greedy answer's end that a branch reads (every end in them is scored)
REACH = 10
#: occurrences of the greedy answer in its passage whose neighbourhoods are tried (the first ones)
OCCURRENCES = 2
#: characters an answer never spans
SENTENCE_ENDS = frozenset("。．！？!?\n\r")
#: rows (one per passage) that run through the model together, and the most questions of one passage in a row
ROWS_AT_ONCE, QUESTIONS_PER_ROW = 4, 8


def script(char: str) -> str:
    """The script class a word boundary is read from: kanji, hiragana, katakana, alphanumeric, or punctuation."""
    if char in "々〆ヵヶ":
        return "kanji"
    if char == "ー":
        return "katakana"
    name = unicodedata.name(char, "")
    if name.startswith("CJK UNIFIED") or name.startswith("CJK COMPATIBILITY IDEOGRAPH"):
        return "kanji"
    for kind in ("HIRAGANA", "KATAKANA"):
        if kind in name:
            return kind.lower()
    if char.isalnum():
        return "alphanumeric"
    return "punctuation"


def boundaries(passage: str) -> list[int]:
    """Character offsets where a word may start or end: 0, len(passage), every change of script, both sides of
    every punctuation mark or space, and between any two hiragana (particles and inflections run together:
    `にかけての` holds the end of `…にかけて`)."""
    kinds = [script(c) for c in passage]
    cuts = {0, len(passage)}
    for i in range(1, len(passage)):
        if kinds[i] != kinds[i - 1] or kinds[i] in ("punctuation", "hiragana"):
            cuts.add(i)
    return sorted(cuts)


def start_candidates(passage: str, answer: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the branches to score: for the first OCCURRENCES places where `answer`
    occurs, its start, up to OUTWARD word boundaries before it (within REACH characters, not across a sentence
    end) and up to INWARD inside it; each branch ends REACH characters past the answer's end, or before a
    sentence end. Empty where the answer is not in the passage."""
    cuts = boundaries(passage)
    out: list[tuple[int, int]] = []
    begin = passage.find(answer) if answer else -1
    for _ in range(OCCURRENCES):
        if begin < 0:
            break
        end = begin + len(answer)
        stop = end
        while stop < min(len(passage), end + REACH) and passage[stop] not in SENTENCE_ENDS:
            stop += 1
        before = [c for c in cuts if begin - REACH <= c < begin][::-1][:OUTWARD]
        before = [c for c in before if not SENTENCE_ENDS & set(passage[c:begin])]
        inside = [c for c in cuts if begin < c < end][:INWARD]
        for start in [begin, *before, *inside]:
            if (start, stop) not in out and passage[start:stop].strip():
                out.append((start, stop))
        begin = passage.find(answer, begin + 1)
    return out


def rescore_spans(model, tokenizer, prompts: Sequence[list[int]], passages: Sequence[str], answers, config, end_ids):
    """Each answer (a `decoding.ScoredAnswer`) replaced by its most probable span (see the module; ties: the greedy
    answer's own tokens, then the earlier start and the shorter span), scored by that log-probability. An empty
    answer (an abstention), or one not in its passage, is kept as it is. `prompts[i]`: the prompt token ids of
    answer i; `config`: the `decoding.DecodingConfig` (its stop strings and max_new_tokens); `end_ids`: the tokens
    that end an answer (`greedy.end_token_ids`). Nothing here imports the decoding registry that calls it."""
    vocab = token_vocab(tokenizer)
    by_passage: dict[str, list[_Job]] = {}
    for i, (prompt, passage, answer) in enumerate(zip(prompts, passages, answers)):
        spans = start_candidates(passage, answer.text)
        if not spans or not prompt:
            continue
        branches = [answer_ids(tokenizer, answer.text)]
        branches += [answer_ids(tokenizer, passage[a:b])[: config.max_new_tokens] for a, b in spans]
        branches = [b for b in branches if b]
        allowed = sorted(vocab.first_pieces(passage.encode()) | set(end_ids) | {t for b in branches for t in b})
        by_passage.setdefault(passage, []).append(_Job(i, list(prompt), branches, allowed, passage))
    groups = [
        jobs[k : k + QUESTIONS_PER_ROW] for jobs in by_passage.values() for k in range(0, len(jobs), QUESTIONS_PER_ROW)
    ]
    out = list(answers)
    for k in range(0, len(groups), ROWS_AT_ONCE):
        for job, best in _best_prefixes(model, tokenizer, groups[k : k + ROWS_AT_ONCE], end_ids, config):
            if best is not None:
                out[job.index] = dataclasses.replace(answers[job.index], text=best[1], score=best[0])
    return out


@dataclass
class _Job:
    """One answer to rescore: its index, prompt ids, branches (token ids), the tokens its distribution is over."""

    index: int
    prompt: list[int]
    branches: list[list[int]]
    allowed: list[int]
    passage: str
    #: filled in by `_tree_row`: the row index of the last prompt token, and of each branch's tokens
    last: int = -1
    branch_at: list[int] = field(default_factory=list)


def _best_prefixes(model, tokenizer, groups: list[list[_Job]], end_ids: set[int], config):
    """(job, best (score, text) or None) for every job: the best over every branch prefix whose text is whole
    characters, occurs in the passage, and holds no stop string. Each group (questions of one passage) is one row."""
    import torch.nn.functional as F

    base = unwrapped(model)
    device = base.get_input_embeddings().weight.device
    weight = base.get_output_embeddings().weight
    softcap = getattr(base.config, "final_logit_softcapping", None)
    rows = [_tree_row(group) for group in groups]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inputs = _tree_batch(rows, pad, sliding_window(base.config), device)
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    results = []
    for r, group in enumerate(groups):
        for job in group:
            ids = torch.tensor(job.allowed, device=device)
            column = {t: c for c, t in enumerate(job.allowed)}
            ends = torch.tensor([column[t] for t in sorted(end_ids) if t in column], device=device)
            best: tuple[float, int, int, str] | None = None  # (score, -branch, -length, text)
            for b, (branch, at) in enumerate(zip(job.branches, job.branch_at)):
                # the last prompt token, then t1..tn: position j predicts t(j+1) or the end of the answer
                where = torch.tensor([job.last, *range(at, at + len(branch))], device=device)
                logits = F.linear(hidden[r, where], weight[ids]).float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                logp = F.log_softmax(logits, dim=-1)
                taken = logp[torch.arange(len(branch)), torch.tensor([column[t] for t in branch], device=device)]
                stop = torch.logsumexp(logp[:, ends], dim=-1)
                scores = (torch.cat([taken.new_zeros(1), taken.cumsum(0)]) + stop).double().tolist()
                for n in range(1, len(branch) + 1):
                    text = decode(tokenizer, branch[:n])
                    if not _usable(text, job.passage, config.stop_strings):
                        continue
                    candidate = (scores[n] if math.isfinite(scores[n]) else -1e300, -b, -n, text.strip())
                    if best is None or candidate[:3] > best[:3]:
                        best = candidate
            results.append((job, None if best is None else (best[0], best[3])))
    return results


def _usable(text: str, passage: str, stop_strings: Sequence[str]) -> bool:
    """A prefix is an answer: whole characters, something visible, a passage substring, no stop string."""
    stripped = text.strip()
    return (
        bool(stripped)
        and "\ufffd" not in text
        and stripped in passage
        and not any(s and s in text for s in stop_strings)
        and not SENTENCE_ENDS & set(stripped)
    )


def _tree_row(group: list[_Job]) -> dict:
    """One row for the questions of one passage, as a tree: the prompts' common prefix once (node 0); per question
    the rest of its prompt (a node whose parent is 0); per branch its tokens (a node whose parent is its
    question's). Every token sits at the position it has after its own prompt, and sees only its ancestors
    (the mask `_tree_batch` builds), so each branch is scored exactly as if it ran alone after its prompt."""
    common = min(len(j.prompt) for j in group) - 1  # every question keeps at least its last prompt token
    for job in group[1:]:
        common = next((i for i in range(common) if job.prompt[i] != group[0].prompt[i]), common)
    ids, positions, nodes, parents = list(group[0].prompt[:common]), list(range(common)), [0] * common, [-1]
    for job in group:
        question = len(parents)
        parents.append(0)
        rest = job.prompt[common:]
        ids += rest
        positions += range(common, len(job.prompt))
        nodes += [question] * len(rest)
        job.last = len(ids) - 1
        job.branch_at = []
        for branch in job.branches:
            parents.append(question)
            job.branch_at.append(len(ids))
            ids += branch
            positions += range(len(job.prompt), len(job.prompt) + len(branch))
            nodes += [len(parents) - 1] * len(branch)
    return {"input_ids": ids, "position_ids": positions, "nodes": nodes, "parents": parents}


def _tree_batch(rows: list[dict], pad: int, window: int | None, device) -> dict:
    """Right-padded rows with their 4-D boolean masks (True = attend): causal, a token sees the tokens of its own
    node and of the node's ancestors; with `window` (Gemma's sliding layers) a dict per layer type that also drops
    keys `window` or more positions back (attention.masks_by_layer_type, as training's shared-prefix rows)."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width, width), dtype=torch.bool)
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[r, :n] = torch.tensor(row["input_ids"])
        positions[r, :n] = torch.tensor(row["position_ids"])
        ancestor = torch.eye(len(row["parents"]), dtype=torch.bool)  # ancestor[a, b]: b is a or an ancestor of a
        for node, parent in enumerate(row["parents"]):
            if parent >= 0:
                ancestor[node] |= ancestor[parent]
        nodes = torch.tensor(row["nodes"])
        mask[r, :n, :n] = ancestor[nodes[:, None], nodes[None, :]] & torch.ones(n, n, dtype=torch.bool).tril()
    mask |= torch.eye(width, dtype=torch.bool)  # padding attends to itself (no all-masked row)
    positions = positions.to(device)
    attention = masks_by_layer_type(mask[:, None].to(device), positions, window)
    return {"input_ids": input_ids.to(device), "position_ids": positions, "attention_mask": attention}
