"""What every confidential workload does around its own computation, inside the TEE.

The steps that make a workload's output trustworthy are the same for every kind (fine-tune, RAG
index, ...): check staging before any key is released, fetch input keys from the confidential
data hub, derive the run's checkpoint key from the data owner's root once the run's grant names
this TEE's initdata (coco_ai.run_keys), fetch the EAR token and the attested TEE key right before
encrypting, sign the manifest, upload with bounded retries. A kind subclasses
:class:`TeeWorkload` and adds its own computation between these steps; its config has the fields
listed in :class:`TeeWorkload`. Exit codes are shared by every kind.

Resources are checked the same way for every kind: inputs larger than the TEE's memory are
refused before any key is released (:meth:`TeeWorkload._check_memory`), and a disk that fills up
during any phase fails that phase with :data:`EXIT_RESOURCES`, before anything is uploaded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO, TypeVar

EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_KEY_RELEASE = 3
EXIT_DATASET = 4  # the keyed input (data set, document repository) is wrong, tampered, malformed
EXIT_BASE_MODEL = 5  # the pinned model (base model, embedder) is wrong or unloadable
EXIT_STAGING = 6
EXIT_ATTESTATION = 7
EXIT_RESOURCES = 8  # the TEE's memory cannot hold the inputs, or its disk filled up

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

T = TypeVar("T")


class WorkloadError(Exception):
    """A failure with a one-line, secret-free reason and the process exit code for it."""

    def __init__(self, reason: str, exit_code: int = EXIT_INTERNAL) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


class WorkloadLog:
    """One ``[<kind>] message`` line per call, flushed (the pipeline relays it to the task log)."""

    def __init__(self, out: TextIO, name: str) -> None:
        self._out = out
        self._prefix = f"[{name}] "

    def __call__(self, message: str) -> None:
        print(self._prefix + message, file=self._out, flush=True)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def private_tmpdir(prefix: str) -> Path:
    """A 0700 temp dir, on tmpfs (/dev/shm) when available so plaintext never touches a disk."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a fresh 0700 dir; that is the point)
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def with_retries(
    what: str,
    fn: Callable[[], T],
    *,
    attempts: int,
    backoff_s: float,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    retry: Callable[[Exception], bool] = lambda exc: True,
) -> T:
    """Call ``fn`` up to ``attempts`` times with exponential backoff; then fail with the cause.
    An exception ``retry`` refuses is raised at once, as it is."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # storage back-ends raise many kinds; all are retried alike
            if not retry(exc):
                raise
            cause = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if attempt == attempts:
                raise WorkloadError(
                    f"{what} failed after {attempts} attempts: {cause}", EXIT_STAGING
                ) from None
            delay = backoff_s * 2 ** (attempt - 1)
            log(f"{what} failed (attempt {attempt}/{attempts}: {cause}); retrying in {delay:.1f} s")
            sleep(delay)
    raise AssertionError("unreachable")


def split_object_uri(uri: str) -> tuple[str, str]:
    from coco_ai.storage import split_object_uri

    try:
        return split_object_uri(uri)
    except ValueError as exc:
        raise WorkloadError(str(exc), EXIT_CONFIG) from None


def _is_remote(path: str) -> bool:
    return "://" in path


def disk_full_error(exc: OSError, when: str) -> WorkloadError:
    """A full disk (ENOSPC, EDQUOT) as a clear workload failure: what was being written, and
    the size of the disk where the workload stages its files (the encrypted checkpoint: TMPDIR)."""
    scratch = tempfile.gettempdir()
    return WorkloadError(
        f"disk full {when}: {exc.strerror}"
        + (f" writing {exc.filename}" if exc.filename else "")
        + f"; the temp dir {scratch} is on a disk of {shutil.disk_usage(scratch).total} bytes "
        "(give the TEE a larger disk, or point TMPDIR at one)",
        EXIT_RESOURCES,
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n} bytes)"


def _meminfo_total(root: Path) -> int | None:
    try:
        lines = (root / "proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemTotal":
            return int(value.split()[0]) * 1024  # "MemTotal: 16318812 kB"
    return None


def _cgroup_limits(root: Path) -> list[tuple[int, str]]:
    """The memory limits of this process's cgroup and its ancestors (v2 ``memory.max``; v1
    ``memory.limit_in_bytes``, whose "unlimited" is a huge number that MemTotal undercuts)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, limit_file = root / "sys/fs/cgroup", "memory.max"
        elif "memory" in controllers.split(","):
            base, limit_file = root / "sys/fs/cgroup/memory", "memory.limit_in_bytes"
        else:
            continue
        group = Path(path.lstrip("/"))
        for part in (group, *group.parents):
            f = base / part / limit_file
            try:
                value = f.read_text().strip()
            except OSError:
                continue
            if value.isdigit():
                limits.append((int(value), f"cgroup limit {f.relative_to(root)}"))
    return limits


def tee_memory(
    explicit_bytes: int | None = None, *, root: Path = Path("/")
) -> tuple[int, str] | None:
    """The memory this TEE has, and what says so: the least of the guest's ``MemTotal``, the
    memory limits of this process's cgroups (in a Kata pod, the pod's memory limit, which also
    sizes the guest VM) and ``explicit_bytes`` (a workload config's ``tee_memory_bytes``: in
    local mode the host's memory is not a TEE's). ``None`` where none of these can be read (a
    guest always has ``/proc``; a local-mode host without it may not)."""
    candidates = _cgroup_limits(root)
    total = _meminfo_total(root)
    if total is not None:
        candidates.append((total, "MemTotal in /proc/meminfo"))
    if explicit_bytes is not None:
        candidates.append((explicit_bytes, "the config's tee_memory_bytes"))
    return min(candidates, default=None)


class TeeWorkload:
    """The steps every kind shares. ``config`` has ``run_id``, ``staging_uri``,
    ``checkpoint_key_uri``, ``run_key_root_uri``, ``guest_api_url``, ``store_attempts`` and
    ``store_backoff_s``; ``guest`` is a ``GuestClient`` (injected in tests)."""

    NAME = "workload"

    def __init__(self, config: Any, *, guest=None, out: TextIO | None = None) -> None:
        self.config = config
        self._guest = guest
        self.log = WorkloadLog(out or sys.stdout, self.NAME)
        self.timings: dict[str, float] = {}  # wall seconds per phase, in order
        self.cpu_timings: dict[str, float] = {}  # process CPU seconds per phase

    def _guest_client(self, stack):
        """The injected guest client, or one on ``config.guest_api_url`` closed with ``stack``."""
        if self._guest is not None:
            return self._guest
        from coco_ai.guest.client import GuestClient

        return stack.enter_context(GuestClient(self.config.guest_api_url))

    def _store_call(
        self, what: str, fn: Callable[[], T], *, retry: Callable[[Exception], bool] = lambda e: True
    ) -> T:
        """``fn`` with the config's bounded object-store retries (``store_attempts``,
        ``store_backoff_s``); see :func:`with_retries`."""
        cfg = self.config
        return with_retries(
            what,
            fn,
            attempts=cfg.store_attempts,
            backoff_s=cfg.store_backoff_s,
            log=self.log,
            retry=retry,
        )

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise disk_full_error(exc, f"during {name}") from None
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            self.cpu_timings[name] = (
                self.cpu_timings.get(name, 0.0) + time.process_time() - cpu_start
            )

    def _check_staging(self) -> None:
        """Fail fast (before any key is released or any compute spent) if staging is unreachable
        or already holds a checkpoint."""
        from coco_ai.crypto.manifest import MANIFEST_FILE
        from coco_ai.storage import open_store

        cfg = self.config

        def probe() -> bool:
            # size(), not exists(): fsspec's exists/isfile answer False when the store is down
            try:
                open_store(cfg.staging_uri).size(MANIFEST_FILE)
            except FileNotFoundError:
                return False
            return True

        occupied = self._store_call(
            f"staging store {cfg.staging_uri}",
            probe,
        )
        if occupied:
            raise WorkloadError(
                f"staging {cfg.staging_uri} already holds a checkpoint; refusing to overwrite",
                EXIT_STAGING,
            )

    def _input_size(self, what: str, path: str) -> int:
        """Bytes of an input (an object, or every file of a model directory), without reading
        it: local paths are stat'ed, object stores asked with bounded retries."""
        from coco_ai.storage import open_store

        if not _is_remote(path) or path.startswith("file://"):
            local = Path(path.removeprefix("file://"))
            files = [local] if local.is_file() else [p for p in local.rglob("*") if p.is_file()]
            return sum(p.stat().st_size for p in files)
        parent, name = split_object_uri(path)

        def size() -> int:
            store = open_store(parent)
            names = store.list(name)  # a model directory; an object lists nothing
            return sum(store.size(n) for n in names) if names else store.size(name)

        return self._store_call(
            f"sizing {what} {path}",
            size,
            retry=lambda exc: not isinstance(exc, FileNotFoundError),
        )

    def _check_memory(self, inputs: dict[str, str], explicit_bytes: int | None) -> None:
        """Refuse, before any key is released or anything is loaded, inputs whose sizes alone
        exceed the TEE's memory (a lower bound: loading and training need more). ``inputs``:
        what each input is → its path or URI."""
        known = tee_memory(explicit_bytes)
        if known is None:
            self.log("memory: not checked (no /proc/meminfo, cgroup or tee_memory_bytes)")
            return
        memory, source = known
        sizes = {}
        for what, path in inputs.items():
            # an absent input is left to the step that loads it (it fails with its own code)
            with suppress(FileNotFoundError):
                sizes[f"{what} {path}"] = self._input_size(what, path)
        need = sum(sizes.values())
        if need > memory:
            listed = ", ".join(f"{what} {_gib(n)}" for what, n in sizes.items())
            raise WorkloadError(
                f"the inputs need at least {_gib(need)} of memory ({listed}), more than the "
                f"TEE's {_gib(memory)} ({source}); give the TEE more memory (kubernetes: the "
                "pod's memory limit) or use smaller inputs",
                EXIT_RESOURCES,
            )
        self.log(f"memory: inputs {_gib(need)} within the TEE's {_gib(memory)} ({source})")

    def _fetch_key(self, guest, uri: str, what: str, *, size: int | None = 32) -> bytes:
        """A resource from the confidential data hub (``size``: the exact length it must have)."""
        from coco_ai.guest.client import GuestError

        try:
            key = guest.get_resource(uri)
        except GuestError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else "no reason given"
            # an outage is not a denial: say which, so an operator retries or fixes the policy
            verb = "denied" if exc.policy_denied else "failed"
            raise WorkloadError(
                f"key release {verb} for the {what} {uri}: {detail}", EXIT_KEY_RELEASE
            ) from None
        if size is not None and len(key) != size:
            raise WorkloadError(
                f"the {what} {uri} is {len(key)} bytes; a {size}-byte AES-256 key is required",
                EXIT_KEY_RELEASE,
            )
        self.log(f"{what} released: {uri}")
        return key

    def _run_key(self, guest) -> bytes:
        """The run's checkpoint key: the run's grant must name this run and this TEE's own
        initdata (as its attestation token reports it); then the key is derived from the data
        owner's root (coco_ai.run_keys)."""
        from coco_ai.kbs.ear import unverified_claims
        from coco_ai.kbs.errors import KbsError
        from coco_ai.run_keys import Grant, RunKeyError, check_grant, derive_run_key, grant_path

        cfg = self.config
        grant_uri = grant_path(cfg.run_id).uri()
        try:
            grant = Grant.from_bytes(self._fetch_key(guest, grant_uri, "grant", size=None))
            token, _ = self._attestation_token(guest)
            claims = unverified_claims(token)  # this TEE's own token, fresh from its AA
            check_grant(grant, run_id=cfg.run_id, initdata_matches=claims.carries_init_data)
            root = self._fetch_key(guest, cfg.run_key_root_uri, "run-key root")
            key = derive_run_key(root, cfg.run_id)
        except (RunKeyError, KbsError) as exc:
            raise WorkloadError(f"run key for {cfg.run_id}: {exc}", EXIT_KEY_RELEASE) from None
        self.log(f"checkpoint key {cfg.checkpoint_key_uri} derived (grant {grant_uri})")
        return key

    def _load_dataset(self, dataset, data_key: bytes) -> tuple[list, str]:
        """The examples of the encrypted data set ``dataset`` (``uri``, ``key_uri``), decrypted
        in memory with ``data_key``, and its ciphertext's digest."""
        from coco_ai.crypto import decrypt_blob
        from coco_ai.crypto.errors import CheckpointError
        from coco_ai.storage import open_store
        from coco_ai.workloads.dataset import DATASET_AAD, DatasetError, parse_jsonl

        parent, name = split_object_uri(dataset.uri)
        blob = self._store_call(
            f"reading data set {dataset.uri}",
            lambda: open_store(parent).read_bytes(name),
        )
        digest = sha256_digest(blob)
        try:
            plaintext = decrypt_blob(
                blob, kek=data_key, aad_context=DATASET_AAD, key_uri=dataset.key_uri
            )
        except CheckpointError as exc:
            raise WorkloadError(
                f"data set {dataset.uri} does not decrypt under {dataset.key_uri} "
                f"(wrong key or tampered): {type(exc).__name__}: {exc}",
                EXIT_DATASET,
            ) from None
        try:
            examples = parse_jsonl(plaintext)
        except DatasetError as exc:
            raise WorkloadError(f"data set {dataset.uri}: {exc}", EXIT_DATASET) from None
        self.log(f"data set {digest}: {len(examples)} records")
        return examples, digest

    def _pinned_model(self, path: str, digest: str, scratch: Path, what: str) -> Path:
        """The model directory at ``path`` (downloaded into ``scratch`` first if it is in an
        object store: a flat Hugging Face directory); its model_digest must be ``digest``."""
        from coco_ai.workloads.models import ModelError, model_digest

        if _is_remote(path) and not path.startswith("file://"):
            from coco_ai.storage import open_store

            parent, dirname = split_object_uri(path)

            def download() -> Path:
                store = open_store(parent)
                names = store.list(dirname)
                if not names:
                    raise FileNotFoundError(f"no files under {path}")
                scratch.mkdir(parents=True, exist_ok=True)
                for name in names:
                    (scratch / name.rpartition("/")[2]).write_bytes(store.read_bytes(name))
                return scratch

            model_dir = self._store_call(
                f"downloading {what} {path}",
                download,
            )
        else:
            model_dir = Path(path.removeprefix("file://"))
        try:
            actual = model_digest(model_dir)
        except ModelError as exc:
            raise WorkloadError(f"{what}: {exc}", EXIT_BASE_MODEL) from None
        if actual != digest:
            raise WorkloadError(
                f"{what} {path} has digest {actual}, but the run names {digest}", EXIT_BASE_MODEL
            )
        self.log(f"{what} {digest} verified")
        return model_dir

    def _attestation_token(self, guest) -> tuple[str, bytes]:
        from coco_ai.guest.client import GuestError

        try:
            return guest.get_token()
        except GuestError as exc:
            raise WorkloadError(
                f"attestation token unavailable from {self.config.guest_api_url}: {exc}",
                EXIT_ATTESTATION,
            ) from None

    def _sign(self, manifest, dst: Path, token: str, tee_key: bytes) -> None:
        from coco_ai.crypto import sign_manifest
        from coco_ai.crypto.errors import CheckpointError

        try:
            sign_manifest(manifest, tee_key, token, dst_dir=str(dst))
        except CheckpointError as exc:
            raise WorkloadError(f"signing the manifest failed: {exc}", EXIT_ATTESTATION) from None
        self.log(f"manifest {manifest.digest()} signed with the attested TEE key")

    def _upload(self, src: Path) -> None:
        from coco_ai.crypto.transfer import upload_checkpoint

        cfg = self.config
        self._store_call(
            f"upload to staging {cfg.staging_uri}",
            lambda: upload_checkpoint(str(src), cfg.staging_uri),
        )
        self.log(f"uploaded to {cfg.staging_uri}")


def workload_main(
    argv: Sequence[str] | None,
    *,
    name: str,
    description: str,
    config_env: str,
    load_config: Callable[[str], Any],
    run: Callable[[Any], Any],
) -> int:
    """The ``python -m`` entry point of a workload kind ``name``: exit 0 only once the signed,
    encrypted output is in staging; otherwise one line on stderr, ``<name>: error: <reason>``,
    and the exit code of the failure class. ``load_config`` raises ``ConfigError``; ``run``
    (given the config) raises :class:`WorkloadError`. ``COCO_AI_<NAME>_DEBUG=1`` prints the
    traceback of an internal error."""
    import argparse
    import traceback

    from coco_ai.workloads.finetune.config import ConfigError

    module = name.replace("-", "_")
    debug_env = f"COCO_AI_{module.upper()}_DEBUG"

    def fail(reason: str, code: int) -> int:
        print(f"{name}: error: {reason}", file=sys.stderr, flush=True)
        return code

    parser = argparse.ArgumentParser(
        prog=f"python -m coco_ai.workloads.{module}", description=description
    )
    parser.add_argument(
        "--config", default=os.environ.get(config_env), help=f"config file (or env {config_env})"
    )
    args = parser.parse_args(argv)
    if not args.config:
        return fail(f"no config: pass --config FILE or set {config_env}", EXIT_CONFIG)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(f"bad config: {exc}", EXIT_CONFIG)
    try:
        run(config)
    except WorkloadError as exc:
        return fail(exc.reason, exc.exit_code)
    except Exception as exc:  # a bug or an unforeseen failure: still one line, nothing uploaded
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:  # outside a timed phase
            error = disk_full_error(exc, "while writing")
            return fail(error.reason, error.exit_code)
        if os.environ.get(debug_env) == "1":
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        return fail(f"internal error: {type(exc).__name__}: {first}", EXIT_INTERNAL)
    return 0
