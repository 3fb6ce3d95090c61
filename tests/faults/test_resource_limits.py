"""Resource limits of the TEE, on the real fine-tune workload (a subprocess beside the Trustee
stand-in and the guest-components emulator, as the workloads tier runs it): inputs larger than
the TEE's memory are refused before any key is released, and a staging disk that fills up while
the encrypted checkpoint is written (a real ENOSPC: a small tmpfs as TMPDIR) fails the run with a
clear error; in both cases nothing reaches staging."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from coco_ai.trustee_dev.state import StateDir
from coco_ai.workloads.dataset import to_jsonl
from coco_ai.workloads.tee import EXIT_RESOURCES, TeeWorkload, WorkloadError, tee_memory
from tests.faults.conftest import Stopwatch
from tests.faults.full_disk import in_mount_namespace, on_tmpfs
from tests.workloads.test_workload_e2e import RUN_ID, make_config, run_workload, staged_files

pytestmark = pytest.mark.timeout(240)
MIB = 2**20


@pytest.fixture(scope="module")
def stack_state(tmp_path_factory):
    from coco_ai.devstack.workload import start_local_stack

    state = tmp_path_factory.mktemp("trustee")
    with start_local_stack(state, RUN_ID) as stack:
        yield stack, state


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("too_large", ["base model", "data set"])
def test_inputs_larger_than_the_tee_memory_are_refused_before_any_key(
    stack_state, tmp_path, tiny_model, examples, matrix, too_large
):
    stack, state = stack_state
    store = tmp_path / "store"
    store.mkdir()
    records = to_jsonl(examples * (200 if too_large == "data set" else 1))
    dataset = store / "northwind.jsonl.enc"
    dataset.write_bytes(stack.encrypt_dataset(records))
    model_bytes, dataset_bytes = _size(tiny_model), dataset.stat().st_size
    # room for the model alone (data set case) or for half of it (base model case)
    memory = model_bytes + MIB if too_large == "data set" else model_bytes // 2
    assert (dataset_bytes > MIB) == (too_large == "data set")
    cfg = make_config(tmp_path, stack, store, tiny_model, tee_memory_bytes=memory)
    releases_before = len(StateDir(state).releases())
    clock = Stopwatch()
    proc = run_workload(tmp_path, cfg)
    took = clock.elapsed()

    assert proc.returncode == EXIT_RESOURCES, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("finetune: error:")]
    for figure in (model_bytes + dataset_bytes, model_bytes, dataset_bytes, memory):
        assert f"({figure} bytes)" in error, error  # every size named, exactly
    assert "the config's tee_memory_bytes" in error
    assert len(StateDir(state).releases()) == releases_before  # no key released
    assert staged_files(tmp_path) == []
    matrix(
        component="resources",
        fault=f"{too_large} larger than the TEE's memory ({memory} bytes, set in the config)",
        step="fine-tune (before key release)",
        outcome="failed closed: exit 8 naming the sizes, before any key or input is loaded",
        recover_s=took,
        keys_left="none released",
        artefacts_left="none (staging empty)",
    )


def test_staging_disk_full_while_writing_the_encrypted_checkpoint_fails_closed(
    stack_state, tmp_path, tiny_model, examples, matrix
):
    """TMPDIR, where the workload writes the encrypted checkpoint before uploading it, is a
    64 KiB tmpfs: training runs, the encrypted write hits ENOSPC."""
    stack, _ = stack_state
    store = tmp_path / "store"
    store.mkdir()
    (store / "northwind.jsonl.enc").write_bytes(stack.encrypt_dataset(to_jsonl(examples)))
    short = {"training__max_steps": 2, "training__sample_questions": 0}
    cfg = make_config(tmp_path, stack, store, tiny_model, **short)
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps(cfg))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        "TMPDIR": str(scratch),
        "COCO_AI_FINETUNE_CONFIG": str(config),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    clock = Stopwatch()
    proc = in_mount_namespace(
        on_tmpfs(scratch, "64k", [sys.executable, "-m", "coco_ai.workloads.finetune"]),
        env=env,
        timeout_s=200,
    )
    took = clock.elapsed()

    assert proc.returncode == EXIT_RESOURCES, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("finetune: error:")]
    assert "disk full during encrypt: No space left on device" in error, error
    assert f"the temp dir {scratch} is on a disk of {64 * 1024} bytes" in error
    assert "step 1/" in proc.stdout  # it trained: the disk filled at the encrypted write
    assert proc.stderr.splitlines()[-1] == "left on the tmpfs: "  # no partial checkpoint kept
    assert staged_files(tmp_path) == []  # nothing uploaded, so nothing to promote
    matrix(
        component="resources",
        fault="staging disk full (ENOSPC on a 64 KiB tmpfs as TMPDIR)",
        step="fine-tune (encrypted checkpoint write)",
        outcome="failed closed: exit 8 naming the phase and the disk's size; nothing uploaded",
        recover_s=took,
        keys_left="released for the run (it trained); the grant is left to revoke_keys, "
        "not run here",
        artefacts_left="none (the partial encrypted checkpoint removed)",
    )


def test_tee_memory_is_the_least_of_cgroup_limits_memtotal_and_the_config(tmp_path):
    """Read from a guest's /proc and /sys as Kata shows them: the container's cgroup limit
    (the pod's memory limit) under an unlimited parent, v2 and v1."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemTotal:        8388608 kB\nMemFree: 1 kB\n")
    (tmp_path / "proc/self/cgroup").write_text("0::/kubepods/pod1/ctr\n")
    pod = tmp_path / "sys/fs/cgroup/kubepods/pod1"
    (pod / "ctr").mkdir(parents=True)
    (pod / "memory.max").write_text("4294967296\n")
    (pod / "ctr/memory.max").write_text("max\n")
    limit = "cgroup limit sys/fs/cgroup/kubepods/pod1/memory.max"
    assert tee_memory(root=tmp_path) == (4 * 2**30, limit)
    assert tee_memory(2**30, root=tmp_path) == (2**30, "the config's tee_memory_bytes")
    (pod / "memory.max").write_text("max\n")
    assert tee_memory(root=tmp_path) == (8 * 2**30, "MemTotal in /proc/meminfo")

    (tmp_path / "proc/self/cgroup").write_text("5:memory:/kubepods/pod1\n3:cpu,cpuacct:/x\n")
    v1 = tmp_path / "sys/fs/cgroup/memory/kubepods/pod1"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("1073741824\n")
    limit = "cgroup limit sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes"
    assert tee_memory(root=tmp_path) == (2**30, limit)
    empty = tmp_path / "no-proc"
    assert tee_memory(root=empty) is None  # nothing to read: the check is skipped, said so
    assert tee_memory(3, root=empty) == (3, "the config's tee_memory_bytes")
    # this host: never more than its physical memory
    assert 0 < tee_memory()[0] <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_inputs_in_an_object_store_are_sized_without_being_read(
    moto_endpoint, s3_admin, monkeypatch
):
    """A model directory and a data set on S3 (moto's server): sized by listing, one object or
    every file of the directory; an absent input is left to the step that loads it."""
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    s3_admin.create_bucket(Bucket="tee-sizes")
    for key, size in {"smol/config.json": 1000, "smol/model.safetensors": 3000}.items():
        s3_admin.put_object(Bucket="tee-sizes", Key=key, Body=b"m" * size)
    s3_admin.put_object(Bucket="tee-sizes", Key="support.jsonl.enc", Body=b"d" * 5000)
    inputs = {"data set": "s3://tee-sizes/support.jsonl.enc", "base model": "s3://tee-sizes/smol"}
    log = io.StringIO()
    workload = TeeWorkload(SimpleNamespace(store_attempts=2, store_backoff_s=0.01), out=log)

    with pytest.raises(WorkloadError) as refused:
        workload._check_memory(inputs, explicit_bytes=8999)
    assert refused.value.exit_code == EXIT_RESOURCES
    assert "(9000 bytes) of memory" in refused.value.reason
    assert "(5000 bytes)" in refused.value.reason and "(4000 bytes)" in refused.value.reason
    workload._check_memory({**inputs, "index": "s3://tee-sizes/absent"}, explicit_bytes=9000)
    assert "inputs 0.00 GiB (9000 bytes) within the TEE's" in log.getvalue()
