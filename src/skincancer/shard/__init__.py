"""Stage 3, shard: prepare every image once (the encode job) and write seeded, byte-identical TFRecord shards."""
