"""The download scripts run under POSIX sh and name the official archives (DRY_RUN: nothing is fetched)."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "data" / "scripts"
EXPECTED = {
    "VOC2007.sh": ["VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"],
    "VOC2012.sh": ["VOCtrainval_11-May-2012.tar"],
    "COCO2014.sh": ["train2014.zip", "val2014.zip", "annotations_trainval2014.zip"],
    "COCO2017.sh": ["train2017.zip", "val2017.zip", "annotations_trainval2017.zip"],
}


@pytest.mark.parametrize(("script", "dry_run"), [(name, "1") for name in sorted(EXPECTED)] + [("VOC2012.sh", "yes")])
def test_dry_run(script: str, dry_run: str, tmp_path: Path) -> None:  # any value but "" and "0" is a dry run
    env = {**os.environ, "DRY_RUN": dry_run, "HOME": str(tmp_path)}
    named = subprocess.run(
        ["sh", str(SCRIPTS / script), str(tmp_path / "d")], env=env, capture_output=True, text=True, check=True
    )
    default = subprocess.run(["sh", str(SCRIPTS / script)], env=env, capture_output=True, text=True, check=True)
    for archive in EXPECTED[script]:
        assert archive in named.stdout
    assert str(tmp_path / "d") in named.stdout
    assert str(tmp_path / "data") in default.stdout  # defaults to ~/data
    assert not (tmp_path / "d").exists()
