"""Benchmark 3: the real architecture on one CUDA GPU. A rinna-3.6B-shaped GPT-NeoX with random
weights, JSQuAD-length sequences, both rinna recipes (configs/rinna-3.6b-seed.yaml: 8-bit, LoRA
r=8 on query_key_value, pad-to-longest; configs/rinna-3.6b-best.yaml: bf16, all-linear rsLoRA r=16,
padding-free batches), measuring training throughput per recipe and the wall time of a greedy
evaluation of the dev split with the best recipe's model. Goals (the issue): best recipe
>= 15,000 tokens/s, 2 epochs of 62,859 questions <= 25 min, dev evaluation <= 60 s.

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_gpu.py [--steps 20] [--chars-per-token 1.0]

CPU smoke run (tiny shape; the 8-bit row is skipped, bitsandbytes needs CUDA):

    JSQUAD_DIR=../shared/jsquad .venv/bin/python benchmarks/bench_gpu.py --device cpu --shape tiny \
        --steps 2 --eval-prompts 8 --batch-size 4 --out /tmp/gpu-smoke.json

On the GPU box install `pip install bitsandbytes` (for the seed row; without it the row is
skipped with the reason) and optionally `pip install flash-attn --no-build-isolation` (the best
recipe then uses flash_attention_2 instead of sdpa).

Sequence lengths: rinna's sentencepiece tokenizer is not available offline, so the length of each
training prompt (the `seed` template, with its answer) is counted in characters and divided by
--chars-per-token. The default 1.0 is the worst case (every character a token; `<NL>` counts 4).

MFU = flops_per_token * tokens_per_second / (peak_tflops * 1e12), with
flops_per_token = 4 * N_frozen + 6 * N_trainable: forward 2N for every weight, backward 2N for
activation gradients through every weight, plus 2N weight gradients only for trainable (LoRA)
weights. N_frozen excludes the input embedding (a table lookup, not a matmul). The attention
term (about 6 * layers * hidden * seq per token, under 1 % here at ~265 tokens) is omitted.
tokens_per_second counts non-padding tokens only, so padding lowers MFU. The 8-bit seed row is
also divided by the bf16 dense peak (989 TFLOPS, H100 SXM, --peak-tflops).

The model is random, so greedy generation never stops early (an EOS or <NL> token has about a
1 in 16,000 chance per step): the evaluation time is the worst case, every answer max_new_tokens long.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import random
import statistics
import sys
import tempfile

import harness
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from jsquad_lora.config.load import load_config
from jsquad_lora.data.jglue import resolve_split
from jsquad_lora.data.jsquad import load_split
from jsquad_lora.encoding.collators import AnswerOnlyCollator, FlatteningCollator, PaddingMeter
from jsquad_lora.generate.decoding import DecodingConfig
from jsquad_lora.generate.greedy import generate_answers
from jsquad_lora.model.load import load_base_model
from jsquad_lora.model.lora import attach_lora, count_parameters
from jsquad_lora.model.sources.tiny import build_char_tokenizer
from jsquad_lora.prompts.templates import render_prompt
from jsquad_lora.train.batch_order import EpochBatchOrder

# rinna/japanese-gpt-neox-3.6b's config.json; "tiny" only checks the plumbing on a CPU
SHAPES = {
    "rinna-3.6b": {"hidden_size": 2816, "num_hidden_layers": 36, "num_attention_heads": 22, "intermediate_size": 11264},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
}
VOCAB = 32000
FIRST_ID = 5  # random token ids start here: never pad/unk/eos/<NL>
RECIPES = ("rinna-3.6b-seed", "rinna-3.6b-best")
GOAL_TOKENS_PER_SECOND, GOAL_TRAIN_MINUTES, GOAL_EVAL_SECONDS = 15_000, 25.0, 60.0


class Skip(Exception):
    """A row that cannot run on this machine; the message is the reason."""


def summary(values: list[int]) -> dict:
    ordered = sorted(values)
    return {
        "p50": ordered[len(ordered) // 2],
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 1),
        "n": len(ordered),
    }


def char_tokenizer():
    """A 32,000-token tokenizer (one character per token) so that the project's own
    `generate_answers`, stop criterion included, decodes a 32k-vocab model. Ids 0-3 are
    <pad>, <unk>, <eos>, <NL>; the rest are CJK ideographs then Hangul syllables (letters only:
    no whitespace or combining marks that could merge or vanish when decoded)."""
    letters = [chr(c) for c in range(0x4E00, 0xA000)] + [chr(c) for c in range(0xAC00, 0xD7A4)]
    tokenizer = build_char_tokenizer(["".join(letters[: VOCAB - 4])])
    assert len(tokenizer) == VOCAB, len(tokenizer)
    return tokenizer, tokenizer.convert_ids_to_tokens(list(range(VOCAB)))


def model_config(shape: str, tokenizer) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        rotary_pct=1.0,
        use_parallel_residual=False,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )


def random_model(config: GPTNeoXConfig, dtype, device: torch.device, attn: str | None):
    torch.manual_seed(0)
    with device:  # initialise on the device: a 3.6B model is minutes of CPU init, seconds on a GPU
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)


def seed_model(config: GPTNeoXConfig, cfg, device: torch.device):
    """The seed's 8-bit base through the project's loader: random fp16 weights saved as safetensors,
    loaded back 8-bit."""
    if device.type != "cuda":
        raise Skip("8-bit loading needs bitsandbytes on a CUDA GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed (pip install bitsandbytes)")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        base = random_model(config, torch.float16, device, None)
        base.save_pretrained(tmp)
        del base
        free_memory()
        return load_base_model(dataclasses.replace(cfg.model, name=tmp))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def example(j: int, length: int, answer_tokens: int, seed: int) -> dict:
    """Random ids, answer-only labels on the last `answer_tokens` tokens (the answer + EOS of a real example)."""
    rng = random.Random(seed * 1_000_003 + j)
    ids = [rng.randrange(FIRST_ID, VOCAB) for _ in range(length)]
    return {"input_ids": ids, "labels": [-100] * (length - answer_tokens) + ids[length - answer_tokens :]}


def train_row(model, cfg, lengths: list[int], args, device: torch.device) -> dict:
    """Warm-up steps, then timed optimizer steps, as training.py's Trainer does them."""
    bf16 = cfg.model.dtype == "bfloat16" and device.type == "cuda"  # run.py: bf16 autocast only for bf16 on CUDA
    accum = cfg.train.grad_accum  # seed: 8 x 2; --batch-size is examples per optimizer step
    micro = max(1, args.batch_size // accum)
    order = list(EpochBatchOrder(lengths, micro, seed=args.seed, grouped=cfg.train.batching != "random"))
    # examples made before timing: the Trainer's are tokenised in advance too (collation is timed)
    needed = [order[i : i + micro] for i in range(0, (args.warmup + args.steps) * accum * micro, micro)]
    chunks = iter([[example(j, lengths[j], args.answer_tokens, args.seed) for j in chunk] for chunk in needed])
    collator = PaddingMeter(
        FlatteningCollator() if cfg.train.batching == "padding_free" else AnswerOnlyCollator(model.config.pad_token_id)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    # no KV cache in training: with one, a padding-free row loses its packed-sequence mask (training.py)
    model.config.use_cache = False
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(optimizer) -> torch.Tensor:
        for _ in range(accum):
            batch = collator(next(chunks))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):  # warm-up steps (allocator, kernels, autotuning) are not timed
        loss = step(optimizer)
    collator.reset()
    with harness.Timer(sync=lambda: sync(device)) as timer:
        for _ in range(args.steps):
            loss = step(optimizer)
    seconds = timer.seconds
    model.config.use_cache = True
    del optimizer
    trainable, total = count_parameters(model)
    frozen = total - trainable - model.get_input_embeddings().weight.numel()
    tokens_per_second = collator.real_tokens / seconds
    flops_per_token = 4 * frozen + 6 * trainable
    return {
        "tokens_per_second": tokens_per_second,
        "padding_fraction": collator.padding_fraction,
        "mfu": flops_per_token * tokens_per_second / (args.peak_tflops * 1e12),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "seconds": seconds,
        "steps": args.steps,
        "micro_batch": micro,
        "grad_accum": accum,
        "bf16_autocast": bf16,
        "batching": cfg.train.batching,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "flops_per_token": flops_per_token,
        "final_loss": float(loss.detach()) * accum,
    }


def eval_row(model, tokenizer, letters: list[str], prompt_lengths: list[int], args, device: torch.device) -> dict:
    """Greedy answers with the project's generate_answers: prompts of random letters whose token
    counts follow the measured prompt lengths (every letter is one token of the 32k tokenizer)."""
    rng = random.Random(args.seed + 1)
    lengths = rng.choices(prompt_lengths, k=args.eval_prompts)
    prompts = ["".join(letters[rng.randrange(FIRST_ID, VOCAB)] for _ in range(n)) for n in lengths]
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size, mode="greedy")
    with harness.Timer(sync=lambda: sync(device)) as timer:
        answers = generate_answers(model, tokenizer, prompts, None, decoding)
    seconds = timer.seconds
    return {
        "prompts": len(prompts),
        "seconds": seconds,
        "prompts_per_second": len(prompts) / seconds,
        "batch_size": args.eval_batch_size,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        # shorter answers stopped early (EOS/<NL>) or hold special tokens: expected ~0 for a random model
        "answers_shorter_than_max": sum(len(a) < args.max_new_tokens for a in answers),
        "prompt_tokens": summary(lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="JSQuAD file or directory for the length distribution (default: $JSQUAD_DIR)")
    parser.add_argument(
        "--split",
        default="test",
        help="split of --data standing in for the training split (the train file is not offline)",
    )
    parser.add_argument(
        "--chars-per-token", type=float, default=1.0, help="characters per rinna token; 1.0 = worst case"
    )
    parser.add_argument(
        "--max-length", type=int, default=1024, help="configs' model.max_length: longer sequences are cut to it"
    )
    parser.add_argument(
        "--answer-tokens", type=int, default=6, help="labelled tokens at the end of each example (answer + EOS)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per recipe")
    parser.add_argument("--eval-prompts", type=int, default=4442, help="dev split size")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak; 989 = H100 SXM")
    parser.add_argument("--train-questions", type=int, default=62_859, help="for the projected training time")
    parser.add_argument("--epochs", type=float, default=2.0, help="for the projected training time")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="rinna-3.6b")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/gpu.json)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run on the GPU box, or smoke-test with --device cpu --shape tiny")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")

    # length distribution of the real training prompts, in (estimated) tokens
    questions = load_split(resolve_split(args.data, args.split)).questions

    def to_tokens(chars: int, low: int, high: int) -> int:  # cut to max_length as training/eval cut passages
        return min(high, max(low, round(chars / args.chars_per_token)))

    train_lengths = [
        to_tokens(len(render_prompt(q, "seed", with_answer=True)), args.answer_tokens + 1, args.max_length)
        for q in questions
    ]
    prompt_lengths = [
        to_tokens(len(render_prompt(q, "seed")), 1, args.max_length - args.max_new_tokens) for q in questions
    ]
    lengths = {
        "source": str(resolve_split(args.data, args.split)),
        "chars_per_token": args.chars_per_token,
        "train_tokens": summary(train_lengths),
        "prompt_tokens": summary(prompt_lengths),
    }
    print(
        f"{len(questions)} questions, {args.chars_per_token} chars/token: training sequence tokens "
        f"p50 {lengths['train_tokens']['p50']}, p90 {lengths['train_tokens']['p90']}, "
        f"max {lengths['train_tokens']['max']}, "
        f"mean {lengths['train_tokens']['mean']}; eval prompt tokens p50 {lengths['prompt_tokens']['p50']}, "
        f"p90 {lengths['prompt_tokens']['p90']}, max {lengths['prompt_tokens']['max']}"
    )
    rng = random.Random(args.seed)
    pool = rng.choices(train_lengths, k=max(len(train_lengths), (args.warmup + args.steps) * args.batch_size))

    tokenizer, letters = char_tokenizer()
    config = model_config(args.shape, tokenizer)
    # bf16 on the GPU as the recipes say; float32 on a CPU, where the smoke run only checks the plumbing
    attn = "flash_attention_2" if device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    rows, evaluation = [], None
    for recipe in RECIPES:
        cfg = load_config(recipe)
        row = {"recipe": recipe, "lora": dataclasses.asdict(cfg.lora)}
        try:
            if cfg.model.load_in_8bit:
                model = seed_model(config, cfg, device)
                row["attn_implementation"] = model.config._attn_implementation
            else:
                dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
                model = random_model(config, dtype, device, attn)
                row["attn_implementation"] = attn
            model = attach_lora(
                model,
                cfg.lora,
                quantized=cfg.model.load_in_8bit,
                gradient_checkpointing=cfg.model.gradient_checkpointing,
            )
            print(f"{recipe}: training {args.warmup} + {args.steps} steps ...", flush=True)
            row.update(train_row(model, cfg, pool, args, device))
            row["projected_minutes"] = (
                args.epochs * args.train_questions * lengths["train_tokens"]["mean"] / row["tokens_per_second"] / 60
            )
            if recipe.endswith("best"):
                print(f"{recipe}: generating {args.eval_prompts} answers ...", flush=True)
                evaluation = eval_row(model, tokenizer, letters, prompt_lengths, args, device)
            del model
        except Skip as reason:
            row["skipped"] = str(reason)
            print(f"{recipe}: skipped: {reason}")
        free_memory()
        rows.append(row)

    print(f"\n{harness.describe()}")
    harness.print_table(
        rows,
        [
            ("recipe", "recipe"),
            ("tokens/s", lambda r: f"skipped: {r['skipped']}" if "skipped" in r else f"{r['tokens_per_second']:,.0f}"),
            ("padding %", lambda r: None if "skipped" in r else f"{100 * r['padding_fraction']:.1f}"),
            ("MFU %", lambda r: None if "skipped" in r else f"{100 * r['mfu']:.1f}"),
            ("peak GiB", "peak_gib", ".1f"),
            (f"{args.epochs:g}-epoch min", "projected_minutes", ".1f"),
        ],
    )
    best = next(r for r in rows if r["recipe"].endswith("best"))
    if "tokens_per_second" in best:
        print(
            f"goal (best): >= {GOAL_TOKENS_PER_SECOND:,} tokens/s: "
            f"{'met' if best['tokens_per_second'] >= GOAL_TOKENS_PER_SECOND else 'NOT met'}; "
            f"2 epochs of {args.train_questions:,} questions <= {GOAL_TRAIN_MINUTES:.0f} min "
            f"({args.epochs:g} epochs projected at the mean length, {lengths['train_tokens']['mean']} tokens): "
            f"{'met' if best['projected_minutes'] * 2 / args.epochs <= GOAL_TRAIN_MINUTES else 'NOT met'}"
        )
    if evaluation:
        print(
            f"eval (best model, greedy, random weights = worst case, never stops early): "
            f"{evaluation['prompts']} prompts in "
            f"{evaluation['seconds']:.1f} s ({evaluation['prompts_per_second']:.1f} prompts/s, "
            f"batch {args.eval_batch_size}, "
            f"max_new_tokens {args.max_new_tokens}); goal <= {GOAL_EVAL_SECONDS:.0f} s for 4,442 dev prompts: "
            f"{'met' if evaluation['seconds'] * 4442 / evaluation['prompts'] <= GOAL_EVAL_SECONDS else 'NOT met'}"
        )

    harness.write_result(
        "gpu",
        rows,
        out=args.out,
        packages=("bitsandbytes", "flash-attn"),
        title="real architecture on one GPU",
        device=str(device),
        model={"shape": args.shape, **SHAPES[args.shape], "vocab_size": VOCAB, "weights": "random"},
        options=vars(args),
        lengths=lengths,
        formulas={
            "mfu": "(4 * N_frozen + 6 * N_trainable) * non-padding tokens/s / (peak_tflops * 1e12); "
            "N_frozen excludes the input embedding; attention FLOPs omitted",
            "projected_minutes": "epochs * train_questions * mean train tokens / tokens/s / 60",
        },
        eval=evaluation,
    )


if __name__ == "__main__":
    main()
