"""Continued pretraining (the library under pretrain/).

shards    pretraining text as zstd jsonl shards: validate, write per source, read back
mixture   the sampling probability of each source (weights, temperature alpha), as a table or a chart
blocks    the resumable stream of packed blocks over the mixed shards, held-out blocks, the trainer that
          evaluates per source
vocab     vocabulary extension: merge tokenizers, initialise new embedding rows
"""
