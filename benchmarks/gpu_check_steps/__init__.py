"""The steps of benchmarks/gpu_check.py: environment, tests/gpu, the profile, the end-to-end
run, and their fallbacks without MPS; each step returns a `StepResult`, never raises."""
