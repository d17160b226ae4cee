"""Stage 8, the report: runs beside the published references, charts and the question browser."""
