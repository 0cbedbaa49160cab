"""Downstream evaluation (`sslam finetune`, `sslam probe`): fine-tuning and linear probing of a
pretrained encoder on a benchmark, following the official SSLAM recipe (spec §9).

Modules, in reading order: `config` (BenchmarkConfig, per-regime hyper-parameters), `protocols`
(which rows train and test each model; k-fold and split), `rounds` (one trained model: data,
classifier, model selection), `training` (the loops, loss, lr schedule), `heads` (classifier
head, layer-wise lr decay), `augment` (mixup, SpecAug, roll + gain, noise), `metrics` (mAP,
accuracy, per-bin scores), `run` (the command line and metrics.json). See docs/evaluation.md.
"""
