"""A nanoGPT-style training function that slwtune tunes: `examples.nanogpt_slw.train:train`.

    python -m examples.nanogpt_slw --out slwtune-out/nanogpt     # from the repository root

`train.py` is your code: its own model, batches, optimizer and checkpoints, with a
`TrainContext` (`ctx`) from slwtune for the knobs and the reports. `spec.yaml` is the job;
`slwtune tune examples/nanogpt_slw/spec.yaml` runs the same job from the command line.
"""
