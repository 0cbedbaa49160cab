# Downstream evaluation: every model (the Stage-1 baseline and each Stage-2 variant) × benchmark × seed,
# fine-tuned (`sslam finetune`) and linear-probed (`sslam probe`). metrics.json is the source of truth.

rule finetune:
    """Fine-tune the whole encoder + head on one benchmark (one seed)."""
    input:
        unpack(evaluation_inputs),
    output:
        f"{RESULTS}/eval/{{model}}/{{benchmark}}/finetune/seed{{seed}}/metrics.json",
    wildcard_constraints:
        **EVALUATION_WILDCARDS,
    params:
        **evaluation_rule_params("finetune"),
    threads: EVALUATE_RESOURCES["threads"]
    resources:
        **evaluation_resources(),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{benchmark}}/finetune-seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{benchmark}}/finetune-seed{{seed}}.tsv"
    conda:
        CONDA_ENV
    shell:
        EVALUATION_SHELL


rule linear_probe:
    """Train LayerNorm + Linear on the frozen encoder's CLS output on one benchmark (one seed)."""
    input:
        unpack(evaluation_inputs),
    output:
        f"{RESULTS}/eval/{{model}}/{{benchmark}}/linear/seed{{seed}}/metrics.json",
    wildcard_constraints:
        **EVALUATION_WILDCARDS,
    params:
        **evaluation_rule_params("linear"),
    threads: EVALUATE_RESOURCES["threads"]
    resources:
        **evaluation_resources(),
    log:
        f"{RESULTS}/logs/eval/{{model}}/{{benchmark}}/linear-seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{model}}/{{benchmark}}/linear-seed{{seed}}.tsv"
    conda:
        CONDA_ENV
    shell:
        EVALUATION_SHELL
