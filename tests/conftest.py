import os

import pytest
from workflow_runner import REPO, TINY, snakemake

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A complete run of the real Snakefile on the tiny demo (shared; tests leave it complete)."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="session")
def tiny_multiclass_run(tmp_path_factory):
    """A run of the real Snakefile on the tiny multi-class demo (config/config.yaml, then
    config/demo_multiclass.yaml, then the tiny settings) to its final outputs (shared; tests
    leave it complete)."""
    workdir = tmp_path_factory.mktemp("tiny_multiclass")
    # 20 train+val images in 6 tag-set strata: a val split of 0.3 holds one of each
    config = {**TINY, "split": {"val_fraction": 0.3}}
    base = [REPO / "config" / "config.yaml", REPO / "config" / "demo_multiclass.yaml"]
    snakemake(workdir, "--cores", "2", config=config, base=base)
    return workdir
