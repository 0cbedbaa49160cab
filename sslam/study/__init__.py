"""The study as data: the DAG model (`dag`), what it costs (`plan`), what the executor needs (`resources`)
and what a code change re-runs (`why`). Torch-free: the workflow builds it at parse time."""
