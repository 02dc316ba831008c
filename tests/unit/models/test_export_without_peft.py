"""An export (LoRA merged into the LLM) loads and predicts where peft cannot be imported: the
import chain of ``inference.service`` and ``models.checkpoint`` holds no peft, and
``Detector.from_export`` is the documented way to predict from it (docs/vmad.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from helpers.models import SMALL_CFG, tiny_tokenizer

from vmad_pipeline.models.build import build_vmad
from vmad_pipeline.models.checkpoint import export_model

# as on a machine without peft: `import peft` fails, and find_spec (which transformers asks
# whether peft is available) says there is none
BLOCKED = """
import sys
sys.modules["peft"] = None
"""

PREDICT = """
import json, numpy as np
from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.inference.service import Detector
cfg = parse_evaluate_params({"max_new_tokens": 3, "progress": False})
detector = Detector.from_export(sys.argv[1], cfg)
image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
seen = detector.inspect([image], ["screw"])[0]
print(json.dumps({"score": seen.score, "mask": list(seen.mask.shape), "peft": sys.modules["peft"] is not None}))
"""


def test_an_export_predicts_without_peft(tmp_path):
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    model = build_vmad(SMALL_CFG, tok, train_classes=["screw"]).eval()
    export_model(model, tok, tmp_path / "export")
    blocked = subprocess.run(
        [sys.executable, "-c", BLOCKED + "import peft"], capture_output=True, text=True
    )
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr  # it holds
    run = subprocess.run(
        [sys.executable, "-c", BLOCKED + PREDICT, str(tmp_path / "export")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["mask"] == [40, 30] and 0.0 <= out["score"] <= 1.0 and not out["peft"]
