"""Self-supervised pretraining (Stage 1 / Stage 2): the `sslam pretrain` command and what it is made of.

config.py       TrainConfig, one per stage (official values by default)
schedule.py     linear warm-up + cosine learning rate, per optimizer update
optim.py        AdamW parameter groups (official "decay everything" or the textbook exemptions)
distributed.py  torchrun process group, device choice, the resumable per-epoch shuffled data order
state.py        atomic training snapshots, random states, resume with fallback to the previous snapshot
metrics.py      metrics.jsonl, MLflow mirror, progress bar, throughput
loop.py         Pretrainer: the update loop itself (objects in, files out)
pretrain.py     the command: study YAML -> objects -> Pretrainer
"""
