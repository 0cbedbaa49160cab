"""Downstream evaluation (`sslam finetune`, `sslam probe`): fine-tuning and linear probing of a
pretrained encoder on a benchmark, following the official SSLAM recipe (spec §9).

Modules, in reading order: `config` (BenchmarkConfig, per-regime hyper-parameters), `protocols`
(which rows train and test each model; k-fold and split; pooled predictions), `rounds` (one trained
model: data, classifier, training, selection), `selection` (the model-selection policies),
`training` (the resumable loop, loss, prediction), `schedule` (the lr of every layer-decay group),
`heads` (classifier head, layer-wise lr decay groups), `augment` (mixup, SpecAug, roll + gain,
noise), `metrics` (mAP, accuracy, per-bin scores), `resume` (the job's exact-resume state), `run`
(the command line, metrics.json, predictions.npz). See docs/evaluation.md.
"""
