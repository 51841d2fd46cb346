"""Benchmarking: `run.bench_artifact` (with `run.BenchOptions`) loads an artifact, measures it and decides its
budgets and baseline gate. Its parts: the measurement loop (`timer`), latency statistics and the regression
test (`stats`), the baseline a run is compared with and how it is kept (`baseline`), what a figure was
measured on (`identity`), edgekit.toml's `[[bench]]` entries (`project`) and the reports (`report`: table,
JUnit, Markdown, plot). Nothing here imports optimize, devices or executors."""
