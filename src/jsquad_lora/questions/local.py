"""A finished run of this tool used by `data generate` (the question generator, the round-trip filter): loaded
once, checked for its task, generating in eval.dtype (bfloat16 where the CPU has it: data generation favours
speed), with its tokenizer measuring passages."""

from __future__ import annotations

from pathlib import Path

from jsquad_lora.data.question import Question
from jsquad_lora.errors import InputError


class LocalRun:
    """`run_dir`'s run, which must be of `task` (else an InputError naming `flag`, with `problem` and `fix`)."""

    def __init__(self, run_dir: str | Path, task: str, flag: str, problem: str, fix: str):
        import torch

        from jsquad_lora.tuned.loaded import load_run_model
        from jsquad_lora.util.devices import inference_dtype

        self.run = load_run_model(Path(run_dir))
        cfg = self.run.cfg
        if cfg.task != task:
            raise InputError(str(run_dir), problem, where=flag, fix=fix)
        self.run.model = self.run.model.to(getattr(torch, inference_dtype(cfg.eval.dtype, cfg.model.dtype)))
        self.name = f"run:{Path(run_dir).resolve().name}"
        self.batch_size = cfg.eval.batch_size

    def count_tokens(self, text: str) -> int:
        return len(self.run.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_room(self, placeholder: str) -> int:
        """The passage tokens one prompt of this run holds beside `placeholder` (a long answer or question) and
        the tokens it generates."""
        from jsquad_lora.encoding.tokens import prompt_ids

        cfg = self.run.cfg
        bare = len(prompt_ids(self.run.tokenizer, self.run.render(Question("", "", "", placeholder, (), ()))))
        return cfg.model.max_length - cfg.eval.max_new_tokens - bare
