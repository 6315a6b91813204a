"""The names of the files slwtune writes and reads, each spelled once.

This module imports nothing, so the service and the dev stack (which never load torch) name a
job's or a dataset's files exactly as the library that writes them does.
"""

# A prepared dataset (`slwtune data prepare`, slwtune.data).
META_FILE = "meta.json"  # the `DatasetMeta` sidecar: tokenizer, sizes, checksums, sources
SPLIT_FILES = {"train": "train.bin", "val": "val.bin"}  # split -> its flat token ids
TOKEN_FILES = tuple(SPLIT_FILES.values())
TOKENIZER_FILE = "tokenizer.json"  # the trained BPE or a copy of the Hugging Face tokenizer

# A job's --out folder (slwtune.job, slwtune.tuning.report, slwtune.export).
JOB_STATE_FILE = "job.json"  # the job's ids and the probes finished so far (what --resume reads)
SPEC_FILE = "spec.yaml"  # the job's spec as it ran
REPORT_FILE = "report.json"  # the outcome; also logged at the root of the parent run's artifacts
REPORT_MARKDOWN = "report.md"  # the same outcome for people
MODEL_DIR = "model"  # the exported model: a folder of the job, an artifact folder of the full run
MODEL_FILE = "model.pt"  # the weights, the model config and the spec, in MODEL_DIR
