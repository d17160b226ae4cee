"""`python -m jsquad_lora ...`: the CLI; also what `torchrun ... -m jsquad_lora` and
`accelerate launch ... -m jsquad_lora` start on every process."""

import sys

from .cli import main

sys.exit(main())
