"""A local stand-in for the Hugging Face Hub's HTTP API, for download tests without a network.

Started by a test on 127.0.0.1 and named by `HF_ENDPOINT`, it answers the routes that
huggingface_hub (2.x) calls for `snapshot_download`, with the headers it checks:

    GET       /api/models/ORG/NAME[/revision/REV]   repo info: `sha` (the commit), `siblings`
    GET       /api/models/ORG/NAME/tree/REV[/PATH]  file listing (size, git oid, LFS sha256)
    HEAD|GET  /ORG/NAME/resolve/REV/FILE            ETag, X-Repo-Commit, Content-Length, Range
    GET       /cdn/SHA256                           large (LFS) files: `resolve` answers them
                                                    with a 302 to another host (`localhost`),
                                                    carrying X-Linked-Etag / X-Linked-Size,
                                                    as the Hub redirects to its CDN
    GET       /api/agent-harnesses                  the registry huggingface_hub reads once per
                                                    process for its User-Agent (empty here)

Errors carry the Hub's `X-Error-Code` (RepoNotFound, GatedRepo, RevisionNotFound,
EntryNotFound) and `X-Error-Message`. As on the Hub, a gated repo's info and listing are
public and its files need a granted token; an unknown token is refused everywhere (401).
Faults for tests: `cut(FILE)` sends part of a file and drops the connection; `fail(FILE)`
answers its downloads with an error status. Every request is recorded in `requests`, and
those of routes the stand-in does not know in `unserved` (tests expect none).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub stores with Git LFS (served through the CDN redirect).
_LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


@dataclass
class HubRequest:
    """One request the stand-in received."""

    method: str
    path: str  # unquoted, without the query
    range: str | None
    token: str | None


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    gated: bool = False
    granted: set[str] = field(default_factory=set)  # tokens with access to a gated repo


@dataclass
class _Fault:
    kind: str  # "cut" or "fail"
    times: int
    after: int = 0
    status: int = 500


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class HubStandIn:
    """The Hub's HTTP API over in-memory repos; `with HubStandIn() as hub:` serves on
    `hub.url` until the block ends (or `stop()`)."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.tokens: set[str] = set()
        self.requests: list[HubRequest] = []
        self.unserved: list[HubRequest] = []
        self._faults: dict[str, list[_Fault]] = {}  # file name -> faults, applied in order
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._blobs: dict[str, bytes] = {}  # sha256 -> content, for the CDN route

    # -- content -----------------------------------------------------------------------
    def add_commit(
        self, repo_id: str, files: dict[str, bytes] | Path, ref: str = "main", tags: tuple[str, ...] = ()
    ) -> str:
        """Commits `files` (a folder, or name -> bytes) as the whole tree of `repo_id` on
        branch `ref` (and `tags`); returns the commit sha."""
        tree = _read_folder(files) if isinstance(files, Path) else dict(files)
        digest = hashlib.sha1()
        for name in sorted(tree):
            digest.update(name.encode() + b"\0" + hashlib.sha256(tree[name]).digest())
        repo = self.repos.setdefault(repo_id, _Repo())
        digest.update(str(len(repo.commits)).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = tree
        for name in (ref, *tags):
            repo.refs[name] = sha
        for data in tree.values():
            self._blobs[hashlib.sha256(data).hexdigest()] = data
        return sha

    def gate(self, repo_id: str, granted_tokens: tuple[str, ...] = ()) -> None:
        """Makes `repo_id` gated, with access for `granted_tokens`."""
        repo = self.repos[repo_id]
        repo.gated = True
        repo.granted.update(granted_tokens)
        self.tokens.update(granted_tokens)

    # -- faults ------------------------------------------------------------------------
    def cut(self, filename: str, after: int, times: int = 1) -> None:
        """The next `times` downloads of `filename` send `after` bytes, then drop the connection
        (after the faults set before)."""
        self._faults.setdefault(filename, []).append(_Fault("cut", times, after=after))

    def fail(self, filename: str, status: int = 500, times: int = 1_000_000) -> None:
        """The next `times` downloads of `filename` are answered with `status` (after the
        faults set before)."""
        self._faults.setdefault(filename, []).append(_Fault("fail", times, status=status))

    def clear_faults(self) -> None:
        """Serves every file normally again."""
        self._faults.clear()

    def _take_fault(self, filename: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults.get(filename, []):
                if fault.times > 0:
                    fault.times -= 1
                    return fault
            return None

    # -- queries -----------------------------------------------------------------------
    def downloads(self, filename: str) -> list[HubRequest]:
        """The GETs that fetched `filename`'s content (resolve or CDN)."""
        out = []
        for r in self.requests:
            if r.method != "GET":
                continue
            if r.path.startswith("/cdn/"):
                if self._cdn_names.get(r.path[5:]) == filename:
                    out.append(r)
            elif "/resolve/" in r.path and r.path.split("/resolve/", 1)[1].split("/", 1)[-1] == filename:
                out.append(r)
        return out

    @property
    def _cdn_names(self) -> dict[str, str]:
        return {
            hashlib.sha256(data).hexdigest(): name
            for repo in self.repos.values()
            for tree in repo.commits.values()
            for name, data in tree.items()
        }

    def requested_files(self) -> set[str]:
        """Every file name whose content or metadata was asked for (HEAD or GET)."""
        names = {r.path.split("/resolve/", 1)[1].split("/", 1)[-1] for r in self.requests if "/resolve/" in r.path}
        cdn = self._cdn_names
        names |= {cdn.get(r.path[5:], r.path) for r in self.requests if r.path.startswith("/cdn/")}
        return names

    # -- serving -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint (for HF_ENDPOINT)."""
        assert self._server is not None, "the stand-in is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubStandIn:
        """Starts serving on a free port of 127.0.0.1."""
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stops serving and drops open connections: nothing answers afterwards."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def running(self) -> bool:
        """Whether requests are answered."""
        return self._server is not None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    """One connection to the stand-in (HTTP/1.1, kept alive as the Hub's are)."""

    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.hub._lock:
                self.hub._connections.discard(self.connection)

    def log_message(self, format: str, *args) -> None:  # quiet: tests read `requests`
        pass

    # -- plumbing ----------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object) -> None:
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _route(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        path = "/" + "/".join(parts)
        token = self._token()
        hub.requests.append(HubRequest(self.command, path, self.headers.get("Range"), token))
        if not hub.running:
            self.close_connection = True
            return
        if parts[0] == "cdn" and len(parts) == 2:
            return self._cdn(parts[1])
        if parts == ["api", "agent-harnesses"]:
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if token is not None and token not in hub.tokens:
            return self._error(401, None, "Invalid credentials in Authorization header")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            rest = parts[4:]
            query = parse_qs(split.query)
            if not rest:
                return self._info(repo_id, "main", token)
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(repo_id, rest[1], token)
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), recursive, token)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), token)
        hub.unserved.append(hub.requests[-1])
        self._error(404, None, f"the stand-in does not serve {path}")

    def _find(self, repo_id: str, revision: str, token: str | None) -> tuple[_Repo, str] | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            # As on the Hub: 401 without a token (a private repo would look the same), else 404.
            self._error(401 if token is None else 404, "RepoNotFound", "Repository not found")
            return None
        sha = repo.refs.get(revision, revision if revision in repo.commits else None)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, sha

    # -- routes ------------------------------------------------------------------------
    def _info(self, repo_id: str, revision: str, token: str | None) -> None:
        found = self._find(repo_id, revision, token)
        if found is None:
            return
        repo, sha = found
        self._json(
            {
                "_id": sha[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "lastModified": "2025-01-01T00:00:00.000Z",
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "library_name": "transformers",
                "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(repo.commits[sha])],
            }
        )

    def _tree(self, repo_id: str, revision: str, prefix: str, recursive: bool, token: str | None) -> None:
        found = self._find(repo_id, revision, token)
        if found is None:
            return
        repo, sha = found
        base = prefix + "/" if prefix else ""
        entries: dict[str, dict] = {}
        for name, data in sorted(repo.commits[sha].items()):
            if not name.startswith(base):
                continue
            rest = name[len(base) :].split("/")
            for depth in range(1, len(rest)):  # folders on the way
                folder = base + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "path": folder}
                    )
            if not recursive and len(rest) > 1:
                continue
            entry = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": name}
            if name.endswith(_LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries[name] = entry
        self._json(list(entries.values()))

    def _resolve(self, repo_id: str, revision: str, filename: str, token: str | None) -> None:
        found = self._find(repo_id, revision, token)
        if found is None:
            return
        repo, sha = found
        if repo.gated and token not in repo.granted:
            if token is None:
                message = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                return self._error(401, "GatedRepo", message)
            message = (
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.hub.url}/{repo_id} to ask for access."
            )
            return self._error(403, "GatedRepo", message)
        tree = repo.commits[sha]
        if filename not in tree:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": sha})
        data = tree[filename]
        if filename.endswith(_LFS_SUFFIXES):
            digest = hashlib.sha256(data).hexdigest()
            port = self.hub._server.server_address[1] if self.hub._server else 0
            return self._send(
                302,
                headers={
                    "Location": f"http://localhost:{port}/cdn/{digest}",
                    "X-Repo-Commit": sha,
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{_git_oid(data)}"',
                },
            )
        self._content(filename, data, {"ETag": f'"{_git_oid(data)}"', "X-Repo-Commit": sha})

    def _cdn(self, digest: str) -> None:
        data = self.hub._blobs.get(digest)
        if data is None:
            return self._error(404, None, "no such blob")
        self._content(self.hub._cdn_names.get(digest, digest), data, {"ETag": f'"{digest}"'})

    def _content(self, filename: str, data: bytes, headers: dict[str, str]) -> None:
        """A file's bytes (all, or the asked range), or the fault set for it."""
        fault = self.hub._take_fault(filename) if self.command == "GET" else None
        if fault is not None and fault.kind == "fail":
            return self._error(fault.status, None, "injected failure")
        status = 200
        total = len(data)
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[6:].split(",")[0].partition("-")
            start = int(first or 0)
            end = min(int(last), total - 1) if last else total - 1
            if start >= total:
                return self._error(416, None, "range not satisfiable", {"Content-Range": f"bytes */{total}"})
            data = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        if fault is not None and fault.kind == "cut":
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: fault.after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, data, headers)
