"""The model source for everything else: a hub id (org/model) or a local model directory, loaded as it is
(`model.load` checks a local directory and turns what is missing into an error naming it)."""

from __future__ import annotations

from jsquad_lora.model.source import ModelSource, register_source

register_source(
    ModelSource(
        "hub-or-directory",
        "a hub id (org/model, needs the network once) or a local model directory as save_pretrained writes it",
        claims=lambda cfg: True,
        resolve=lambda cfg: cfg.name,
        describe=lambda cfg: (cfg.name, f"see the model card of {cfg.name}"),
        precedence=90,  # whatever no other source claims
    )
)
