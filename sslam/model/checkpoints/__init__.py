"""Checkpoints: their types (`types`), reading any supported layout (`read`), what a checkpoint argument may
name (`routes`: files, hf: ids, model folders), the input settings a checkpoint records (`settings`), the
restricted unpickler (`unpickler`), export (`export`) and conversion (`convert`). Arrows run one way:
convert, export -> read -> routes, unpickler, settings -> types."""
