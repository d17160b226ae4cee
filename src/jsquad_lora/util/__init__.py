"""What every stage may use: atomic files, the one JSON reader, the cache, devices, processes, MeCab."""
