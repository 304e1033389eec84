"""The CLI's last word on a refusal from the file system is one line, never a traceback (issue 11:
found by tools/attack.py, where a file stood in the place of an output folder: FileExistsError
tracebacks from `predict --maps`, `train --out`, `evaluate --out` and `export --out`)."""

from __future__ import annotations

import numpy as np
import torch

from protloc.model_file import save_model_file
from protloc.cli import main
from protloc.labels import HPA13
from protloc.models import create_model


def test_a_file_where_the_maps_folder_must_go_is_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    save_model_file(model, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=32, thresholds=[0.5] * 13)
    np.savez(tmp_path / "s1.npz", sample=np.random.default_rng(0).integers(0, 255, (36, 36, 4), dtype=np.uint8))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    code = main(["predict", "--model", str(model), "--maps", str(blocker / "maps"), "--out",
                 str(tmp_path / "p.csv"), "--workers", "0", str(tmp_path / "s1.npz")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("protloc: error")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and str(blocker) in errors[0] and "Errno" not in errors[0], err
