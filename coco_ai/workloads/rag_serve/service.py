"""Start-up and the retrieval core of the attested retrieval service, inside the TEE.

Start-up (:meth:`ServiceStartup.start`) refuses to return a service on any doubt, each failure a
:class:`WorkloadError` with the exit code of its class (coco_ai.workloads.tee):

1. its own attestation token from the guest API; its own initdata claims must name the role
   ``rag_serve`` and the configured run id (config is not trusted: the claims are);
2. the trust anchor file must be the one the initdata pins by digest;
3. the index at ``index_uri`` must verify without a key (coco_ai.crypto.verify_checkpoint): its
   token chains to the anchor, is affirming, and names the index run and the ``rag_index``
   workload; the manifest is signed by the TEE key attested in it, belongs to the index run,
   and every object matches it; and its digest must be the one the initdata pins (promotion's);
4. the index run's key, derived from the run-key root that Trustee releases to this TEE
   (coco_ai.run_keys), must decrypt every file, bound to that run, to the same manifest;
5. the embedder directory's digest must be the manifest's ``base_model_digest``;
6. each admitted caller's credential is fetched through the confidential data hub.

The decrypted index lives in this process's memory; the private tmpfs dir it was decrypted into
is removed before the service answers anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coco_ai.workloads.rag_serve.config import ServeConfig
from coco_ai.workloads.rag_serve.identity import (
    CALLER_KEY,
    CREDENTIAL_SIZE,
    INDEX_MANIFEST_KEY,
    INDEX_RUN_KEY,
    SERVICE_ROLE,
    TRUST_ANCHOR_KEY,
    admitted_callers,
    anchor_digest,
    credential_path,
)
from coco_ai.workloads.tee import (
    EXIT_ATTESTATION,
    EXIT_BASE_MODEL,
    EXIT_CONFIG,
    EXIT_DATASET,
    EXIT_KEY_RELEASE,
    TeeWorkload,
    WorkloadError,
    private_tmpdir,
)

#: verified caller tokens kept (cleared when full: a flood of fresh tokens costs only time)
_TOKEN_CACHE_SIZE = 4096
#: the file, in the credentials directory, holding the index store's fsspec options
STORAGE_OPTIONS_FILE = "storage-options.json"
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# words too common to say anything about which sentence answers a question
_STOPWORD_TEXT = """a an and are as at be by does do for from how in is it of on or the to was
what when where which who why with"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    doc_id: str
    title: str
    chunk: int  # the chunk's index among its document's chunks
    start: int  # character offsets of the chunk in the document text
    end: int
    text: str

    def citation(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "chunk": self.chunk, "start": self.start, "end": self.end}

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            **self.citation(),
            "title": self.title,
            "text": self.text,
        }


class Retriever:
    """The decrypted index in memory: queries embedded with the index's own embedder."""

    def __init__(self, index, chunks: list[dict], titles: dict[str, str], embedder) -> None:
        self._index = index
        self._chunks = chunks
        self._titles = titles
        self._embedder = embedder
        self._lock = threading.Lock()  # one query at a time through torch and FAISS

    @property
    def size(self) -> int:
        return len(self._chunks)

    def retrieve(self, query: str, k: int) -> list[Hit]:
        from coco_ai.workloads.rag_index.index import search

        with self._lock:
            scores, ids = search(self._index, self._embedder.embed([query]), k)
        hits = []
        for score, i in zip(scores[0], ids[0], strict=True):
            if i < 0:
                continue
            c = self._chunks[int(i)]
            hits.append(
                Hit(
                    len(hits) + 1,
                    float(score),
                    c["doc_id"],
                    self._titles.get(c["doc_id"], ""),
                    c["index"],
                    c["start"],
                    c["end"],
                    c["text"],
                )
            )
        return hits

    def answer(self, question: str, k: int) -> tuple[str, list[Hit]]:
        """An extractive answer: the sentence of the top-``k`` chunks sharing the most content
        words with the question (ties: the better-ranked chunk), and the chunk it came from."""
        hits = self.retrieve(question, k)
        asked = set(_WORD.findall(question.lower())) - _STOPWORDS
        best: tuple[int, int, str, Hit] | None = None
        for hit in hits:
            for sentence in _SENTENCE_END.split(hit.text):
                overlap = len(asked & set(_WORD.findall(sentence.lower())))
                key = (overlap, -hit.rank)
                if best is None or key > best[:2]:
                    best = (overlap, -hit.rank, sentence.strip(), hit)
        if best is None:
            return "", []
        return best[2], [best[3]]


@dataclass(frozen=True)
class RequestProof:
    """A request's proof of possession: the caller's ES256 signature, by the TEE key its token
    attests, over ``signed`` (coco_ai.workloads.rag_serve.signing.request_signing_input, which
    covers ``nonce`` and ``timestamp``)."""

    nonce: str
    timestamp: int
    signed: bytes
    signature: str


#: how far a proof's time may be from the service's clock, and how long its nonce is remembered
PROOF_WINDOW_S = 60
#: nonces remembered at most (a flood needs admitted callers; when full, old ones go first)
_NONCE_CACHE_SIZE = 65536


class CallerGate:
    """Admits a request when its credential is the one Trustee released for the named caller,
    its attestation token (chained to the anchor, unexpired, every submod affirming) names that
    caller's credential in its initdata, and its proof is signed by the key that token attests,
    within ``PROOF_WINDOW_S`` of the service's clock, with a nonce not seen before: a stolen
    credential and token are useless without the caller's TEE key, and a proof is good once.

    A token's verification is cached for its lifetime (tokens are public evidence; what the
    cache saves is the chain and signature check of a token already seen). Both checks always
    run and are combined at the end, the credential comparison in constant
    time against a same-length decoy for unknown callers, so the time and the (fixed) answer of
    a refusal do not depend on which check failed or on which caller ids exist.
    """

    def __init__(
        self,
        trust_anchor_pem: bytes,
        fetch: Callable[[str], bytes],
        callers: dict[str, str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._anchor = trust_anchor_pem
        self._fetch = fetch  # credential URI -> bytes (the confidential data hub)
        self._callers = dict(callers)
        self._clock = clock
        self._credentials: dict[str, bytes] = {}
        self._decoy = hashlib.sha256(trust_anchor_pem).digest()
        # token -> (exp, the credential URI it names, "" if not affirming, its attested key or
        # None): a caller's token is verified once (chain, signature, claims), then only its
        # expiry is checked again
        self._verified_tokens: dict[str, tuple[float, str, Any]] = {}
        self._nonces: dict[str, float] = {}  # nonce -> when it may be forgotten
        self._lock = threading.Lock()
        self.refresh()

    @property
    def admitted(self) -> list[str]:
        return sorted(self._credentials)

    def refresh(self) -> list[str]:
        """Fetch every admitted caller's credential again; a caller whose credential Trustee no
        longer releases (deleted, revoked) is dropped. The callers refused this time."""
        fresh, refused = {}, []
        for caller, uri in self._callers.items():
            try:
                credential = self._fetch(uri)
            except Exception:
                refused.append(caller)
                continue
            if len(credential) != CREDENTIAL_SIZE:
                refused.append(caller)
                continue
            fresh[caller] = credential
        self._credentials = fresh  # one assignment: a request sees the old set or the new one
        return refused

    def admits(self, caller: str, credential: bytes, token: str, proof: RequestProof) -> bool:
        from coco_ai.kbs.ear import verify_ear_token
        from coco_ai.kbs.errors import KbsError
        from coco_ai.workloads.rag_serve.signing import verify_es256

        credentials = self._credentials
        expected = credentials.get(caller, self._decoy)
        same = hmac.compare_digest(expected, credential) and caller in credentials
        now = self._clock()
        verified = self._verified_tokens.get(token)
        if verified is None:
            try:
                claims = verify_ear_token(token, self._anchor, now=now)
                named = (claims.init_data_claims() or {}).get(CALLER_KEY)
                verified = (
                    claims.expires_at,
                    str(named) if claims.all_affirming() else "",
                    _attested_key(claims),
                )
            except (KbsError, ValueError, TypeError):
                verified = (0.0, "", None)
            if len(self._verified_tokens) >= _TOKEN_CACHE_SIZE:
                self._verified_tokens.clear()
            self._verified_tokens[token] = verified
        expires_at, named, key = verified
        expected_uri = _credential_uri_or_empty(caller)
        # an empty name (a token naming no caller, or an unusable caller id) never matches
        attested = now < expires_at and bool(named) and hmac.compare_digest(named, expected_uri)
        possessed = (
            key is not None
            and abs(now - proof.timestamp) <= PROOF_WINDOW_S
            and verify_es256(key, proof.signed, proof.signature)
        )
        return same and attested and possessed and self._first_use(proof.nonce, now)

    def _first_use(self, nonce: str, now: float) -> bool:
        """Remember an admitted request's nonce for the proof window: a replay is refused."""
        with self._lock:
            if nonce in self._nonces:
                return False
            if len(self._nonces) >= _NONCE_CACHE_SIZE:
                for old in [n for n, until in self._nonces.items() if until < now]:
                    del self._nonces[old]
                while len(self._nonces) >= _NONCE_CACHE_SIZE:  # all live: the oldest go first
                    del self._nonces[next(iter(self._nonces))]
            self._nonces[nonce] = now + 2 * PROOF_WINDOW_S
            return True


def _attested_key(claims):
    """The caller's attested TEE public key (its token's tee-pubkey, P-256), or None."""
    from jwcrypto import jwk
    from jwcrypto.common import JWException

    from coco_ai.kbs.errors import KbsError

    try:
        attested = claims.tee_pubkey()
        if attested.get("kty") != "EC" or attested.get("crv") != "P-256":
            return None
        key = jwk.JWK(**{k: attested[k] for k in ("kty", "crv", "x", "y")})
        return key.get_op_key("verify")
    except (KbsError, KeyError, TypeError, ValueError, JWException):
        return None


def _credential_uri_or_empty(caller: str) -> str:
    try:
        return credential_path(caller).uri()
    except ValueError:
        return ""


@dataclass
class LoadedService:
    """What start-up proved and loaded; the guest client stays open for tokens and refreshes."""

    retriever: Retriever
    gate: CallerGate
    guest: Any  # GuestClient
    index_run_id: str
    manifest_digest: str
    claims: dict[str, str]

    def attestation(self) -> tuple[str, bytes]:
        """(a current EAR token of this TEE, PEM of the TEE key it attests: the signing key)."""
        return self.guest.get_token()

    def close(self) -> None:
        self.guest.close()


class ServiceStartup(TeeWorkload):
    """Steps 1-6 of the module docstring. ``guest`` is a ``GuestClient`` (injected in tests)."""

    NAME = "rag-serve"
    config: ServeConfig

    def start(self, *, clock: Callable[[], float] = time.time) -> LoadedService:
        from coco_ai.guest.client import GuestClient

        guest = self._guest or GuestClient(self.config.guest_api_url)
        try:
            return self._start(guest, clock)
        except BaseException:
            if self._guest is None:
                guest.close()
            raise

    def _start(self, guest, clock) -> LoadedService:
        from coco_ai.kbs.ear import unverified_claims

        with self._phase("attest"):
            token, _ = self._attestation_token(guest)
            claims = dict(unverified_claims(token).init_data_claims() or {})
        claims = self._check_identity(claims)
        anchor = self._trust_anchor(claims)
        index_run = claims[INDEX_RUN_KEY]
        with self._phase("verify_index"):
            manifest_digest, manifest = self._verify_index(anchor, claims)
        with self._phase("keys"):
            key = self._index_key(guest, claims, index_run)
        plain = private_tmpdir("coco-ai-rag-serve-")
        try:
            with self._phase("decrypt_index"):
                self._decrypt(plain / "index", key, manifest_digest)
                del key
            with self._phase("load"):
                retriever = self._load(plain, manifest)
        finally:
            shutil.rmtree(plain, ignore_errors=True)  # plaintext gone before anything is served
        with self._phase("caller_credentials"):
            callers = self._callers(claims)
            gate = CallerGate(anchor, guest.get_resource, callers, clock=clock)
        refused = sorted(set(callers) - set(gate.admitted))
        self.log(
            f"index of run {index_run} ({manifest_digest}) loaded: {retriever.size} chunks; "
            f"{len(gate.admitted)} caller(s) admitted"
            + (f", credentials not released for: {', '.join(refused)}" if refused else "")
        )
        return LoadedService(retriever, gate, guest, index_run, manifest_digest, claims)

    def _check_identity(self, claims: dict[str, Any]) -> dict[str, str]:
        from coco_ai.guest.initdata import RUN_ID_KEY, RUN_KEY_ROOT_KEY, WORKLOAD_KEY

        if claims.get(WORKLOAD_KEY) != SERVICE_ROLE:
            raise WorkloadError(
                f"this TEE's initdata names workload {claims.get(WORKLOAD_KEY)!r}, not "
                f"{SERVICE_ROLE!r}",
                EXIT_ATTESTATION,
            )
        if claims.get(RUN_ID_KEY) != self.config.run_id:
            raise WorkloadError(
                f"this TEE's initdata names run {claims.get(RUN_ID_KEY)!r}, the config "
                f"{self.config.run_id!r}",
                EXIT_CONFIG,
            )
        for key in (INDEX_RUN_KEY, INDEX_MANIFEST_KEY, TRUST_ANCHOR_KEY, RUN_KEY_ROOT_KEY):
            if not isinstance(claims.get(key), str) or not claims[key]:
                raise WorkloadError(f"this TEE's initdata lacks {key}", EXIT_ATTESTATION)
        return {k: v for k, v in claims.items() if isinstance(v, str)}

    def _trust_anchor(self, claims: dict[str, str]) -> bytes:
        path = self.config.trust_anchor_file
        try:
            anchor = Path(path).read_bytes()
        except OSError as exc:
            raise WorkloadError(
                f"cannot read trust anchor {path}: {exc.strerror}", EXIT_CONFIG
            ) from None
        if anchor_digest(anchor) != claims[TRUST_ANCHOR_KEY]:
            raise WorkloadError(
                f"trust anchor {path} is not the one this TEE's initdata pins "
                f"({claims[TRUST_ANCHOR_KEY]})",
                EXIT_CONFIG,
            )
        return anchor

    def _verify_index(self, anchor: bytes, claims: dict[str, str]):
        from coco_ai.crypto import VerificationPolicy, verify_checkpoint
        from coco_ai.crypto.errors import CheckpointError
        from coco_ai.guest.initdata import WORKLOAD_KEY
        from coco_ai.kbs.errors import KbsError
        from coco_ai.run_keys import checkpoint_key_path

        cfg = self.config
        index_run = claims[INDEX_RUN_KEY]
        # GPUs: promotion checked the index run against the owner's policy, and the manifest
        # digest it published is pinned below; here the chain itself is proven again.
        policy = VerificationPolicy.for_run(
            index_run, min_gpus=0, init_data_claims={WORKLOAD_KEY: "rag_index"}
        )
        try:
            verified = verify_checkpoint(
                cfg.index_uri,
                trust_anchor_pem=anchor,
                policy=policy,
                storage_options=self._storage_options(),
            )
        except (CheckpointError, KbsError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise WorkloadError(
                f"index {cfg.index_uri} refused: {type(exc).__name__}: {first}", EXIT_DATASET
            ) from None
        if verified.manifest_digest != claims[INDEX_MANIFEST_KEY]:
            raise WorkloadError(
                f"index {cfg.index_uri} has manifest {verified.manifest_digest}; this TEE's "
                f"initdata pins the promoted {claims[INDEX_MANIFEST_KEY]}",
                EXIT_DATASET,
            )
        if verified.manifest.key_uri != checkpoint_key_path(index_run).uri():
            raise WorkloadError(
                f"index {cfg.index_uri} is not encrypted under run {index_run}'s key",
                EXIT_DATASET,
            )
        self.log(f"index {verified.manifest_digest} of run {index_run} verified")
        return verified.manifest_digest, verified.manifest

    def _storage_options(self) -> dict[str, Any]:
        """The index store's credentials (fsspec options), if any: ``storage-options.json`` in
        the directory ``COCO_AI_RAG_SERVE_CREDENTIALS_DIR`` names, where the pod's launcher
        leaves what it unsealed (CoCo sealed secrets, unsealed by the CDH inside the TEE). Read
        here, never logged; without it the store's own environment defaults apply."""
        import os

        from coco_ai.workloads.rag_serve.config import CREDENTIALS_DIR_ENV

        directory = os.environ.get(CREDENTIALS_DIR_ENV)
        if not directory:
            return {}
        path = Path(directory) / STORAGE_OPTIONS_FILE
        try:
            options = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise WorkloadError(
                f"storage credentials {path} unreadable: {type(exc).__name__}", EXIT_CONFIG
            ) from None
        if not isinstance(options, dict):
            raise WorkloadError(f"storage credentials {path} must be a JSON object", EXIT_CONFIG)
        return options

    def _index_key(self, guest, claims: dict[str, str], index_run: str) -> bytes:
        from coco_ai.guest.initdata import RUN_KEY_ROOT_KEY
        from coco_ai.run_keys import RunKeyError, derive_run_key

        root = self._fetch_key(guest, claims[RUN_KEY_ROOT_KEY], "run-key root")
        try:
            return derive_run_key(root, index_run)
        except RunKeyError as exc:
            raise WorkloadError(f"index key: {exc}", EXIT_KEY_RELEASE) from None

    def _decrypt(self, dst: Path, key: bytes, manifest_digest: str) -> None:
        from coco_ai.crypto import decrypt_checkpoint
        from coco_ai.crypto.errors import CheckpointError

        uri = self.config.index_uri
        try:
            manifest = decrypt_checkpoint(
                uri, dst, kek=key, storage_options=self._storage_options()
            )
        except (CheckpointError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise WorkloadError(
                f"index {uri} does not decrypt: {type(exc).__name__}: {first}", EXIT_DATASET
            ) from None
        # the store is read twice: what was decrypted must be what was verified
        if manifest.digest() != manifest_digest:
            raise WorkloadError(f"index {uri} changed while it was loaded", EXIT_DATASET)

    def _load(self, plain: Path, manifest) -> Retriever:
        import faiss

        from coco_ai.workloads.models import ModelError
        from coco_ai.workloads.rag_index.embedder import Embedder
        from coco_ai.workloads.rag_index.index import (
            CHUNKS_FILE,
            DOCUMENTS_FILE,
            INDEX_FILE,
            INDEX_FORMAT,
            INDEX_INFO_FILE,
        )

        index_dir = plain / "index"
        try:
            info = json.loads((index_dir / INDEX_INFO_FILE).read_text(encoding="utf-8"))
            chunks = [
                json.loads(line)
                for line in (index_dir / CHUNKS_FILE).read_text(encoding="utf-8").splitlines()
            ]
            documents = json.loads((index_dir / DOCUMENTS_FILE).read_text(encoding="utf-8"))
            index = faiss.read_index(str(index_dir / INDEX_FILE))
        except (OSError, ValueError, RuntimeError) as exc:
            raise WorkloadError(
                f"index files unreadable: {type(exc).__name__}", EXIT_DATASET
            ) from None
        if info.get("format") != INDEX_FORMAT or info.get("embedder_digest") != (
            manifest.base_model_digest
        ):
            raise WorkloadError("index.json is not this manifest's index", EXIT_DATASET)
        if index.ntotal != len(chunks):
            raise WorkloadError(
                f"index holds {index.ntotal} vectors for {len(chunks)} chunks", EXIT_DATASET
            )
        model_dir = self._pinned_model(
            self.config.embedder_path, manifest.base_model_digest, plain / "embedder", "embedder"
        )
        embedding = info.get("embedding") or {}
        try:
            embedder = Embedder(
                model_dir,
                max_seq_length=int(embedding.get("max_seq_length", 256)),
                batch_size=int(embedding.get("batch_size", 32)),
            )
        except ModelError as exc:
            raise WorkloadError(f"embedder: {exc}", EXIT_BASE_MODEL) from None
        if embedder.dim != index.d:
            raise WorkloadError(
                f"embedder dimension {embedder.dim} is not the index's {index.d}", EXIT_BASE_MODEL
            )
        titles = {d["id"]: d["title"] for d in documents}
        return Retriever(index, chunks, titles, embedder)

    def _callers(self, claims: dict[str, str]) -> dict[str, str]:
        try:
            return admitted_callers(claims)
        except ValueError as exc:
            raise WorkloadError(str(exc), EXIT_ATTESTATION) from None
