"""The model cache: graphs by sha256, weights per version, resumable downloads.

A version is used only after its bytes verify: the graph against the plan's
``graph_sha256`` (and the manifest's ``sha256``), a full weights frame against
``weights_sha256``, weights rebuilt from a delta against the response's
``Fedge-Weights-Digest`` (a hash of the values, ``quantization.weights_digest``;
servers that do not send it: by re-encoding to the frame the plan names). A
cached graph is re-hashed before use whenever its identity on disk (inode,
size, mtime) differs from when this process last verified it — after a
restart, a rewrite, a truncation — so a file damaged that way is
re-downloaded, never trained on; a graph unchanged since it verified is not
re-read every round (in-place bit rot that keeps size and mtime is caught at
the next agent start). Partial downloads live in ``cache/partial`` and resume
with ``Range``.

The current version's weights are also kept in memory (read-only arrays), so
a device that trains on the same version again, or rebuilds the next version
from a delta, does not re-read and re-parse its ``.npz``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_client import codec
from edge_client.errors import DownloadError, IntegrityError, ServerError, StateReadError
from edge_client.paths import inside, safe_name, safe_sha256
from edge_client.protocol import Plan, ProtocolClient, check_status
from edge_client.storage import StateDir, arrays_from_bytes, arrays_to_bytes, read_json
from edge_client.transport import StreamingTransport
from fedge.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)

# Sent with a weights delta: quantization.weights_digest of the version's weights.
DIGEST_HEADER = "Fedge-Weights-Digest"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class DownloadStats:
    """What a fetch cost; returned with the model so cycle results can show it."""

    graph_bytes: int = 0
    weights_bytes: int = 0
    used_delta: bool = False
    graph_cached: bool = False
    weights_cached: bool = False
    resumed_from: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph_bytes": self.graph_bytes,
            "weights_bytes": self.weights_bytes,
            "used_delta": self.used_delta,
            "graph_cached": self.graph_cached,
            "weights_cached": self.weights_cached,
            "resumed_from": self.resumed_from,
        }


@dataclass(frozen=True)
class CachedModel:
    manifest: Manifest
    graph_path: Path
    weights: dict[str, np.ndarray]
    version: int
    stats: DownloadStats


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a file, None if it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ModelCache:
    def __init__(self, state: StateDir, client: ProtocolClient) -> None:
        self.state = state
        self.client = client
        self.root = state.root / "cache"
        self._index_key: tuple[int, int, int] | None = None
        self._index_data: dict[str, Any] | None = None
        # (model, version, weights) of the last committed version.
        self._memory: tuple[str, int, dict[str, np.ndarray]] | None = None
        # Files this process has verified, by their identity on disk: path ->
        # ((inode, size, mtime_ns), what was verified). A rewrite, truncation
        # or replacement changes the identity and forces a fresh check.
        self._verified_graphs: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._parsed_manifests: dict[Path, tuple[tuple[int, int, int], Manifest]] = {}

    # index ---------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        """The cache index (shared: copy it before changing it). Every check-in
        asks for the cached version, so the parsed file is kept and re-read only
        when its identity on disk (inode, size, mtime) changes, as a rename or
        an edit does."""
        path = self.root / "index.json"
        try:
            st = path.stat()
            key: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and key == self._index_key and self._index_data is not None:
            return self._index_data
        try:
            data = read_json(path)
        except StateReadError as exc:
            log.warning("%s; starting with an empty cache", exc)
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            self._index_key, self._index_data = None, None
            return {"models": {}}
        self._index_key, self._index_data = key, data
        return data

    def cached_version(self, model: str) -> int | None:
        entry = self._index()["models"].get(model)
        if not isinstance(entry, dict):
            return None
        version = entry.get("version")
        if not isinstance(version, int):
            return None
        if self._remembered(model, version) is None and not self._weights_path(
            model, version
        ).exists():
            return None
        return version

    def _remembered(self, model: str, version: int) -> dict[str, np.ndarray] | None:
        memory = self._memory
        if memory is not None and memory[0] == model and memory[1] == version:
            return memory[2]
        return None

    def _cached_weights(self, model: str, version: int) -> dict[str, np.ndarray] | None:
        remembered = self._remembered(model, version)
        if remembered is not None:
            return remembered
        return self._load_weights(self._weights_path(model, version))

    # Every name below comes from a plan, i.e. from the network: each is
    # checked before it becomes a path (edge_client.paths), and every write
    # checks that the resolved file is inside the state directory.
    def _weights_path(self, model: str, version: int) -> Path:
        return self.root / "weights" / safe_name(model, "model") / f"{int(version)}.npz"

    def _manifest_path(self, model: str, version: int) -> Path:
        return self.root / "manifests" / safe_name(model, "model") / f"{int(version)}.json"

    def _graph_path(self, sha: str) -> Path:
        return self.root / "graphs" / f"{safe_sha256(sha, 'graph_sha256')}.tflite"

    def _write(self, path: Path, data: bytes) -> None:
        self.state.writer.write_bytes(inside(self.state.root, path), data)

    # fetching ------------------------------------------------------------
    async def _fetch_resumable(self, url: str, name: str, stats: DownloadStats) -> bytes:
        part = self.root / "partial" / f"{safe_name(name, 'download')}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        part = inside(self.state.root, part)
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset:
            stats.resumed_from = offset
            log.info("resuming %s from byte %d", url, offset)
        transport = self.client.transport
        if isinstance(transport, StreamingTransport):
            resp = await transport.fetch_to(url, part, headers={**self.client._auth(), **headers})
        else:
            resp = await self.client.get(url, headers)
            if resp.status in (200, 206):
                with part.open("ab" if resp.status == 206 else "wb") as fh:
                    fh.write(resp.body)
        if resp.status == 416:
            # Our partial file is longer than the resource: it belongs to something else.
            part.unlink(missing_ok=True)
            raise DownloadError(f"GET {url}: range not satisfiable; partial download discarded")
        try:
            check_status(resp, f"GET {url}", ok=(200, 206))
        except ServerError:
            if resp.status < 500:
                part.unlink(missing_ok=True)
            raise
        data = part.read_bytes()
        part.unlink(missing_ok=True)
        return data

    async def _manifest(self, plan: Plan) -> Manifest:
        path = self._manifest_path(plan.model, plan.version)
        key = _identity(path)
        if key is not None:
            parsed = self._parsed_manifests.get(path)
            if parsed is not None and parsed[0] == key:
                manifest = parsed[1]
            else:
                manifest = None
                with contextlib.suppress(ManifestError, OSError):
                    manifest = Manifest.from_json(path.read_bytes())
                    self._parsed_manifests[path] = (key, manifest)
            if manifest is not None and manifest.sha256 == plan.graph_sha256:
                return manifest
        resp = await self.client.get(plan.urls["manifest"])
        check_status(resp, "GET manifest")
        try:
            manifest = Manifest.from_json(resp.body)
        except ManifestError as exc:
            raise ServerError(f"manifest from the server is invalid: {exc}") from exc
        if manifest.sha256 != plan.graph_sha256:
            raise IntegrityError(
                f"manifest sha256 {manifest.sha256} does not match the plan's {plan.graph_sha256}"
            )
        self._write(path, resp.body)
        return manifest

    async def _graph(self, plan: Plan, stats: DownloadStats) -> Path:
        path = self._graph_path(plan.graph_sha256)
        key = _identity(path)
        if key is not None:
            # Hashed again whenever the file's identity changed since this
            # process last hashed it (any write to it does; the agent never
            # writes a graph in place): a graph corrupted on disk is
            # re-downloaded, never trained on, without re-reading megabytes
            # per round.
            verified = self._verified_graphs.get(path) == (key, plan.graph_sha256)
            if verified or sha256_hex(path.read_bytes()) == plan.graph_sha256:
                self._verified_graphs[path] = (key, plan.graph_sha256)
                stats.graph_cached = True
                return path
            log.warning("cached graph %s is corrupted; downloading it again", path.name)
            self._verified_graphs.pop(path, None)
            path.unlink()
        data = await self._fetch_resumable(plan.urls["model"], plan.graph_sha256, stats)
        digest = sha256_hex(data)
        if digest != plan.graph_sha256:
            raise IntegrityError(
                f"downloaded model.tflite has sha256 {digest}, the plan says {plan.graph_sha256}"
            )
        stats.graph_bytes = len(data)
        self._write(path, data)
        key = _identity(path)
        if key is not None:
            self._verified_graphs[path] = (key, digest)
        return path

    async def _weights(
        self, plan: Plan, manifest: Manifest, stats: DownloadStats
    ) -> dict[str, np.ndarray]:
        if self._entry_sha(plan.model, plan.version) == plan.weights_sha256:
            cached = self._cached_weights(plan.model, plan.version)
            if cached is not None:
                stats.weights_cached = True
                return cached
        base_version = self.cached_version(plan.model)
        delta_url = plan.urls.get("delta")
        if delta_url and base_version is not None and base_version != plan.version:
            base = self._cached_weights(plan.model, base_version)
            if base is not None:
                resp = await self.client.get(delta_url)
                if resp.status == 200:
                    try:
                        rebuilt = codec.apply_delta(resp.body, base, manifest)
                    except DownloadError as exc:
                        log.warning("%s; fetching full weights", exc)
                    else:
                        if self._rebuilt_verifies(rebuilt, manifest, plan, resp.header(
                                DIGEST_HEADER)):
                            stats.used_delta = True
                            stats.weights_bytes = len(resp.body)
                            return rebuilt
                        log.warning("weights rebuilt from the delta do not verify; "
                                    "fetching full weights")
                if resp.status != 404:
                    check_status(resp, "GET weights delta")
                log.info("server has no delta from version %d; fetching full weights", base_version)
        data = await self._fetch_resumable(
            plan.urls["weights"], f"{plan.model}-{plan.version}-weights", stats
        )
        digest = sha256_hex(data)
        if digest != plan.weights_sha256:
            raise IntegrityError(
                f"downloaded weights have sha256 {digest}, the plan says {plan.weights_sha256}"
            )
        stats.weights_bytes = len(data)
        return codec.decode_weights(data, manifest)

    @staticmethod
    def _rebuilt_verifies(rebuilt: Mapping[str, np.ndarray], manifest: Manifest, plan: Plan,
                          digest: str | None) -> bool:
        """The delta is exact (XOR): the rebuilt weights are the version's own.
        Checked against the value digest the server sent with the delta, or,
        from a server that sends none, by re-encoding them to the very frame
        the plan's weights_sha256 names (a zstd pass over every weight)."""
        if digest is not None:
            return codec.weights_digest(rebuilt, manifest) == digest.strip().lower()
        return codec.weights_frame_sha256(rebuilt, manifest) == plan.weights_sha256

    def _load_weights(self, path: Path) -> dict[str, np.ndarray] | None:
        try:
            return arrays_from_bytes(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cached weights %s unreadable (%s); ignoring them", path, exc)
            return None

    def _entry_sha(self, model: str, version: int) -> str | None:
        entry = self._index()["models"].get(model)
        if isinstance(entry, dict) and entry.get("version") == version:
            sha = entry.get("weights_sha256")
            return sha if isinstance(sha, str) else None
        return None

    def _commit(self, plan: Plan, weights: Mapping[str, np.ndarray]) -> None:
        """Store the version's weights, point the index at it, drop older versions."""
        self._write(self._weights_path(plan.model, plan.version), arrays_to_bytes(weights))
        # Read-only: every later cycle on this version shares these arrays.
        kept = {}
        for name, array in weights.items():
            frozen = np.array(array, copy=True)
            frozen.flags.writeable = False
            kept[name] = frozen
        self._memory = (plan.model, plan.version, kept)
        index = copy.deepcopy(self._index())
        previous = index["models"].get(plan.model)
        index["models"][plan.model] = {
            "version": plan.version,
            "graph_sha256": plan.graph_sha256,
            "weights_sha256": plan.weights_sha256,
        }
        self.state.writer.write_json(self.root / "index.json", index)
        if isinstance(previous, dict) and previous.get("version") != plan.version:
            # One version per model is enough for deltas; SD cards are small.
            old_version = previous.get("version")
            if isinstance(old_version, int):
                self._weights_path(plan.model, old_version).unlink(missing_ok=True)
            old_sha = previous.get("graph_sha256")
            if isinstance(old_sha, str) and old_sha != plan.graph_sha256:
                self._graph_path(old_sha).unlink(missing_ok=True)

    async def fetch(self, plan: Plan) -> CachedModel:
        stats = DownloadStats()
        manifest = await self._manifest(plan)
        graph = await self._graph(plan, stats)
        weights = await self._weights(plan, manifest, stats)
        missing = [t.name for t in manifest.tensors if t.name not in weights]
        if missing:
            raise DownloadError(f"weights for version {plan.version} lack tensors {missing}")
        if not stats.weights_cached:
            self._commit(plan, weights)
            weights = self._memory[2] if self._memory is not None else weights
        return CachedModel(manifest, graph, weights, plan.version, stats)
