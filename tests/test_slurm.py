"""The workflow on a real SLURM scheduler with profiles/slurm: the same results as a local run.

A single-node SLURM (slurm_cluster.py) runs the tiny demo through snakemake-executor-plugin-slurm
with the config of the shared local run (`tiny_run`, conftest.py), whose files it must match;
then a toy workflow checks that a failed job comes back with the profile's larger memory and time.

A SLURM job of the demo takes 11-19 s (two snakemake start-ups: the job and its srun step) and
is seen finished at the next status poll, so the SLURM run stops at the segmentation's
evaluation: about 3-4 minutes on 2 idle cores.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from slurm_cluster import ClusterUnavailable, SlurmCluster, install
from workflow_runner import REPO, SNAKEMAKE, TINY

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

RUN_TIMEOUT = 900  # seconds for the two runs (about 4 minutes on 2 idle cores)
CORES = 2  # the threads of tiny_run's `--cores 2`: the same threads give the same numbers
# the segmentation's evaluation and all it is made from: split, stain, classifier, CAMs,
# pseudo-masks, segmentation model and predictions (but no figures and no side summaries, which a
# 2-CPU node would run one after the other with the 2-CPU jobs)
TARGETS = ["results/segmentation/evaluation.json"]
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
TOY = """\
rule all:
    input:
        "split.txt",
        "other.txt",


# named after a rule of the workflow: its memory comes from the profile's set-resources
rule split:
    output:
        "split.txt",
    shell:
        "test {{resources.mem_mb}} -gt {split} && echo {{resources.mem_mb}} > {{output}}"


# a rule the profile does not name: its memory comes from default-resources
rule other:
    output:
        "other.txt",
    shell:
        "test {{resources.mem_mb}} -gt {other} && echo {{resources.mem_mb}} > {{output}}"
"""


def profile_value(rule: str, resource: str, attempt: int) -> int:
    """A resource of `rule` in profiles/slurm at `attempt` (set-resources, else the default)."""
    expr = PROFILE["set-resources"].get(rule, {}).get(resource)
    if expr is None:
        expr = PROFILE["default-resources"][resource]
    return eval(str(expr), {"attempt": attempt})


class Snakemake:
    """A snakemake process in the background, in its own process group, with its log."""

    def __init__(self, workdir: Path, *args: str, env: dict):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "snakemake.log"
        cmd = [str(SNAKEMAKE), *args]
        env = {**env, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg"}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, deadline: float) -> str:
        """Its log once it has succeeded; AssertionError if it fails or outlives `deadline`."""
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"timed out: {self.log}\n{self.log.read_text()[-6000:]}") from None
        text = self.log.read_text()
        if self.proc.returncode != 0:
            raise AssertionError(f"snakemake failed ({self.proc.returncode}):\n{text[-8000:]}")
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # snakemake cancels its SLURM jobs
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def demo(workdir: Path, *args: str, env: dict) -> Snakemake:
    """The workflow on the demo config + TINY, as tests/workflow_runner.py runs it, to TARGETS."""
    workdir.mkdir(parents=True, exist_ok=True)
    override = workdir / "test_config.yaml"
    override.write_text(yaml.safe_dump(TINY))
    config = [str(REPO / "config" / "config.yaml"), str(override)]
    snakefile = str(REPO / "Snakefile")
    args = ("--snakefile", snakefile, "--configfile", *config, *args, *TARGETS)
    return Snakemake(workdir, *args, env=env)


def job_stats(log: str) -> Counter:
    """The ``Job stats`` table snakemake prints: jobs per rule."""
    table = log.split("Job stats:", 1)[1].splitlines()[3:]
    counts = Counter()
    for line in table:
        rule, count = line.split()
        if rule == "total":
            return counts
        counts[rule] = int(count)
    raise AssertionError("no total in the job stats")


def planned(log: str) -> dict[str, str]:
    """``{rule: its job's threads and resources lines}`` from a snakemake log."""
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", log, flags=re.MULTILINE)
    }


def run_id(log: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", log).group(1)


def slurm_time(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}:00"


@pytest.fixture(scope="module")
def cluster():
    try:
        install()
        cluster = SlurmCluster()
    except ClusterUnavailable as err:
        pytest.skip(f"no SLURM cluster: {err}")
    try:
        cluster.start()
    except ClusterUnavailable as err:
        cluster.stop()
        pytest.skip(f"SLURM did not start: {err}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def runs(cluster, tiny_run, tmp_path_factory):
    """The demo on SLURM, then the toy on SLURM; beside them the local run, tiny_run."""
    if cluster.cpus < CORES:
        pytest.skip(f"the SLURM node has {cluster.cpus} CPUs, tiny_run's jobs used {CORES}")
    root = tmp_path_factory.mktemp("slurm")
    profile = copy.deepcopy(PROFILE)
    profile["default-resources"]["slurm_partition"] = cluster.partition
    profile.update(
        {
            "cores": CORES,
            "resources": {"mem_mb": cluster.memory_mb},  # no job asks for more than the node has
            "slurm-status-command": "squeue",  # no accounting database: sacct knows no job
            # status polls 6, 22, 48 s after a submission (10 s longer each time, the plugin's
            # rule): a job of the demo takes 11-19 s on 2 idle cores, two snakemake start-ups
            "slurm-init-seconds-before-status-checks": 6,
            "seconds-between-status-checks": 6,
        }
    )
    (root / "profile").mkdir()
    (root / "profile" / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    toy = root / "toy"
    toy.mkdir()
    first = {rule: profile_value(rule, "mem_mb", 1) for rule in ("split", "other")}
    (toy / "Snakefile").write_text(TOY.format(**first))

    on_slurm = ("--workflow-profile", str(root / "profile"))
    deadline = time.monotonic() + RUN_TIMEOUT
    procs = {"slurm": demo(root / "on_slurm", *on_slurm, env=cluster.env)}
    logs = {}
    try:
        logs["slurm"] = procs["slurm"].wait(deadline)
        # the toy's jobs would hold the node's CPUs while the demo waits for them
        procs["toy"] = Snakemake(
            toy, "--snakefile", str(toy / "Snakefile"), *on_slurm, env=cluster.env
        )
        logs["toy"] = procs["toy"].wait(deadline)
    finally:
        for proc in procs.values():
            proc.kill()
    jobs = cluster.jobs()
    (root / "slurm_jobs.json").write_text(json.dumps(jobs, indent=1))  # for a look afterwards
    return {
        "root": root,
        "local": tiny_run,
        "logs": logs,
        "memory_cap": cluster.memory_mb,
        "jobs": jobs,
    }


def result_files(workdir: Path) -> dict[str, Path]:
    """Every output of a run by relative path, but logs and benchmarks (they hold timings)."""
    results = workdir / "results"
    return {
        p.relative_to(results).as_posix(): p
        for p in results.rglob("*")
        if p.is_file() and p.relative_to(results).parts[0] not in {"logs", "benchmarks"}
    }


def without_seconds(path: Path) -> list[list[str]]:
    """A CSV's cells without its ``seconds`` column (wall-clock time of each epoch/image)."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
    assert len(keep) == len(rows[0]) - 1, f"{path} has no single seconds column"
    return [[row[i] for i in keep] for row in rows]


def test_slurm_results_equal_local_results(runs):
    """Byte for byte, but the wall-clock `seconds` columns of the CSVs that time epochs/images:
    every file of the SLURM run (to TARGETS) is the local run's (to its final outputs)."""
    on_slurm = result_files(runs["root"] / "on_slurm")
    local = result_files(runs["local"])
    assert set(on_slurm) <= set(local), sorted(set(on_slurm) - set(local))
    for name in ("split/split.csv", "classifier/metrics.csv", "segmentation/per_image.csv"):
        assert name in on_slurm
    masks = [f for f in on_slurm if re.fullmatch(r"pseudo_masks/shards/\d+/masks/.+\.png", f)]
    assert len(masks) == TINY["demo"]["n_images"]
    for name, path in sorted(on_slurm.items()):
        if path.read_bytes() != local[name].read_bytes():
            assert name.endswith(".csv"), f"{name} differs"
            assert without_seconds(path) == without_seconds(local[name]), f"{name} differs"


def test_each_job_got_its_profile_resources_from_slurm(runs):
    log = runs["logs"]["slurm"]
    jobs = [j for j in runs["jobs"] if j["name"] == run_id(log)]
    assert jobs and all(j["state"] == "COMPLETED" for j in jobs), jobs
    rules = Counter(re.sub(r"^rule_|_wildcards_.*$", "", j["comment"]) for j in jobs)
    expected = job_stats(log)  # the jobs snakemake planned
    expected.pop("all", None)  # a target rule without a job: snakemake submits nothing
    assert rules == expected  # one SLURM job per job, none retried

    plans = planned(log)
    gpu_rules = {rule for rule, plan in plans.items() if re.search(r"\bgpu=1\b", plan)}
    assert {"train_classifier", "train_segmentation", "cams"} <= gpu_rules
    for job in jobs:
        rule = re.sub(r"^rule_|_wildcards_.*$", "", job["comment"])
        threads = re.search(r"threads: (\d+)", plans[rule])
        mem = min(profile_value(rule, "mem_mb", 1), runs["memory_cap"])
        assert job["memory"] == f"{mem}M", job
        assert job["time_limit"] == slurm_time(profile_value(rule, "runtime", 1)), job
        assert job["cpus"] == (threads.group(1) if threads else "1"), job
        assert job["tres"] == ("gres:gpu:1" if rule in gpu_rules else "N/A"), job
    assert {j["cpus"] for j in jobs} == {"1", str(CORES)}


def test_failed_job_is_resubmitted_with_more_memory(runs):
    toy = runs["root"] / "toy"
    jobs = [j for j in runs["jobs"] if j["name"] == run_id(runs["logs"]["toy"])]
    for rule in ("split", "other"):
        memory = [min(profile_value(rule, "mem_mb", a), runs["memory_cap"]) for a in (1, 2)]
        runtime = [profile_value(rule, "runtime", attempt) for attempt in (1, 2)]
        assert memory[1] > memory[0] and runtime[1] > runtime[0]
        assert (toy / f"{rule}.txt").read_text().split() == [str(memory[1])]
        attempts = sorted(
            (int(j["memory"].rstrip("M")), j["state"], j["time_limit"])
            for j in jobs
            if j["comment"] == f"rule_{rule}"
        )
        assert attempts == [
            (memory[0], "FAILED", slurm_time(runtime[0])),
            (memory[1], "COMPLETED", slurm_time(runtime[1])),
        ]
