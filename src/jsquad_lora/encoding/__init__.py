"""Stage 3, encoding: prompts and answers as token ids, training rows and their collators."""
