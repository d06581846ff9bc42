"""Generated corpora the benchmarks read, each shaped like a real archive and cached once (common.cache_dir())."""
