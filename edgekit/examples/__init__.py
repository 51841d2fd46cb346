"""Built-in examples: real trained models on real data that install from the package registries."""
