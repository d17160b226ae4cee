"""Stage 6, generation: answers by batched greedy decoding in any registered decoding mode."""
