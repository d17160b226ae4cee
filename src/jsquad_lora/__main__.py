"""`python -m jsquad_lora ...`: the CLI; also what `torchrun ... -m jsquad_lora` and
`accelerate launch ... -m jsquad_lora` start on every process."""

from __future__ import annotations

import sys

from jsquad_lora.cli import main

sys.exit(main())
