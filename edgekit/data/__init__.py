"""Real data through a model, shared by quantize, compare, optimize, bench, export and the loader: feeds and
their checks (`feeds`), calibration and evaluation sources (`calibration`: folders, `.npz`, manifests, Python
iterables), image preprocessing recipes recorded in manifests (`preprocess`), and output agreement metrics
(`metrics`). It sits below every command and imports only the ground floor, `onnxmodel` and `config` (manifests
and their TOML)."""
