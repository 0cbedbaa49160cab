"""Self-supervised pretraining (Stage 1 / Stage 2): the `sslam pretrain` command and what it is made of.

config.py       TrainConfig, one per stage (official values by default)
schedule.py     linear warm-up from 0 + cosine learning rate per update (sslam.runtime.schedules), as a LambdaLR
optim.py        AdamW parameter groups (official "decay everything" or the textbook exemptions)
distributed.py  torchrun process group, device choice, the resumable per-epoch shuffled data order
state.py        what a pretraining snapshot holds and which run it belongs to (files: sslam.runtime.snapshots)
metrics.py      metrics.jsonl, MLflow mirror, throughput
loop.py         Pretrainer: the update loop itself (objects in, files out)
pretrain.py     the command: study YAML -> objects -> Pretrainer
"""
