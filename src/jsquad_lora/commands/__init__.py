"""Command-line pieces below `cli.py`: a command group with its arguments and handlers (`data`), and the
options every command that reads a data source takes. argparse only; the logic is in the modules below."""
