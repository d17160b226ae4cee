"""Using a finished run: load it once, ask it, serve it over HTTP, export it."""
