"""One pipeline: the per-batch core, offsets and ledger, the checkpoint/commit path,
the loop, and the runners (single process, replicas, per-key shards)."""
