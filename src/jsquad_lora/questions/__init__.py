"""Question sets from documents (`jsquad-lora data generate`): passages → answer candidates → questions from a
generator (a task=question run of this tool, or an OpenAI-compatible chat endpoint) → checks → a round-trip
filter (a QA run) → SQuAD JSON with each question's provenance. See docs/generate.md."""
