#!/usr/bin/env bash
# Issue 20's behaviour proof: four short runs whose predictions, scores, loss logs, steps and resolved
# configs must stay byte-identical across a reshaping (timings aside: fingerprint.py drops them).
#   docs/reshape/behaviour_baseline.sh OUT_DIR            # then: python docs/reshape/fingerprint.py OUT_DIR
set -euo pipefail
out=${1:?usage: behaviour_baseline.sh OUT_DIR}
cli=${JSQUAD_LORA_CLI:-.venv/bin/jsquad-lora}
export JSQUAD_DIR=${JSQUAD_DIR:-../shared/jsquad}
small="data.train_limit=120 data.eval_limit=60 train.epochs=1 train.logging_steps=1"
# 1. extractive + full fine-tuning + shared-prefix rows (tiny-cpu as shipped, cut short)
$cli run --config tiny-cpu --output "$out/extractive-full-shared" $small
# 2. greedy + LoRA + length-grouped batches
$cli run --config tiny-cpu --output "$out/greedy-lora-grouped" $small lora.enabled=true \
    lora.target_modules=[all-linear] eval.decoding=greedy train.batching=length_grouped train.synthetic_per_passage=0
# 3. few-shot + padding-free batches
$cli run --config tiny-cpu --output "$out/fewshot-paddingfree" $small prompt.fewshot=1 train.batching=padding_free
# 4. a short Gemma 3 270M run in float32 (the default recipe otherwise)
$cli run --output "$out/gemma-float32" data.train_limit=24 data.eval_limit=24 train.logging_steps=1 train.mixed_precision=float32 \
    eval.dtype=float32
