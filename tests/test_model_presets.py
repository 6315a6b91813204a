"""The preset table is torch-free, so validating a job spec never imports torch."""

import subprocess
import sys

from slwtune.model import MODEL_PRESETS as FROM_MODEL
from slwtune.model_presets import MODEL_PRESETS


def test_the_model_module_uses_the_same_table():
    assert FROM_MODEL is MODEL_PRESETS


def test_spec_validation_does_not_import_torch():
    code = ("import sys, slwtune.spec as s; spec = s.load_spec('gpt2-117m'); assert spec.context_length() == 1024; "
            "assert s.JobSpec().problems() == []; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
