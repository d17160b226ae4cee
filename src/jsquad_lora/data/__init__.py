"""Stage 1, data: questions read from a data format (registry), validated, sampled."""
