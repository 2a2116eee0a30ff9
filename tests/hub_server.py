"""A Hugging Face Hub stand-in for tests: repos in memory, served on 127.0.0.1 only.

It answers the HTTP calls huggingface_hub 2.x makes for ``model_info(files_metadata=True)``,
``snapshot_download``/``hf_hub_download``, ``create_repo``, ``create_commit``/``upload_folder``,
refs, commits (with dates and parents) and tags, ``get_paths_info`` and the Range reads of
``get_safetensors_metadata``; errors carry the ``X-Error-Code`` header the client maps to its exception
types. Large binary files are reported as LFS with their sha256, as the real Hub does, so locks
carry real LFS hashes. Every file is accepted as a "regular" upload, so no LFS/Xet transfer is
needed.
Point a subprocess at it with ``HF_ENDPOINT=server.url`` (read at import time).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf", ".msgpack")


def card_data(readme: bytes) -> dict | None:
    """The YAML front matter of a model card, as the Hub returns it in ``cardData``."""
    text = readme.decode(errors="replace")
    if not text.startswith("---\n") or "\n---" not in text[3:]:
        return None
    try:
        data = yaml.safe_load(text[4 : text.index("\n---", 3)])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    date: str
    parent: str | None = None


@dataclass
class Repo:
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit oid
    tags: set[str] = field(default_factory=set)
    private: bool = False

    def resolve(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)

    def history(self, commit: Commit) -> list[Commit]:
        """``commit`` and its ancestors, newest first (what ``list_repo_commits`` returns)."""
        found = [commit]
        while found[-1].parent:
            found.append(self.commits[found[-1].parent])
        return found


class Hub:
    """The in-memory state; tests seed it directly and read back what was uploaded."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()

    def commit(self, repo_id: str, files: dict[str, bytes], message: str = "update", branch: str = "main",
               deleted: tuple[str, ...] = (), date: str | None = None) -> str:
        """Add a commit on ``branch`` holding ``files`` on top of its current tree; returns its oid.
        ``date`` (ISO 8601, e.g. ``2024-05-01T12:00:00.000Z``) defaults to now."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo())
            parent = repo.resolve(branch)
            tree = dict(parent.files) if parent else {}
            for path in deleted:
                tree = {p: d for p, d in tree.items() if p != path and not p.startswith(path.rstrip("/") + "/")}
            tree.update(files)
            seed = f"{repo_id}\n{parent.oid if parent else ''}\n{message}\n{len(repo.commits)}".encode()
            oid = hashlib.sha1(seed + b"".join(p.encode() + git_blob_sha1(d).encode() for p, d in sorted(tree.items()))).hexdigest()
            date = date or time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            repo.commits[oid] = Commit(oid, tree, message, date, parent.oid if parent else None)
            repo.refs[branch] = oid
            return oid

    def file_entry(self, path: str, data: bytes, metadata: bool) -> dict:
        entry = {"rfilename": path}
        if metadata:
            entry.update(size=len(data), blobId=git_blob_sha1(data))
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry


class Handler(BaseHTTPRequestHandler):
    server: "HubServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    @property
    def hub(self) -> Hub:
        return self.server.hub

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # ------------------------------------------------------------------ routes

    def do_HEAD(self) -> None:
        self._resolve_file(head=True)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            repo = self._repo(repo_id)
            if repo is None:
                return
            if not rest or rest[0] == "revision":
                commit = self._commit(repo, rest[1] if rest else "main")
                if commit:
                    metadata = query.get("blobs", ["false"])[0].lower() == "true"
                    siblings = [self.hub.file_entry(p, d, metadata) for p, d in sorted(commit.files.items())]
                    self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private,
                                     "siblings": siblings, "tags": [], "downloads": 0, "likes": 0,
                                     "cardData": card_data(commit.files.get("README.md", b""))})
                return
            if rest[0] == "tree":
                commit = self._commit(repo, rest[1])
                if commit:
                    prefix = "/".join(rest[2:])
                    self._json(200, [self._tree_entry(path, data) for path, data in sorted(commit.files.items())
                                     if not prefix or path.startswith(prefix + "/")])
                return
            if rest[0] == "refs":
                branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                            for n, o in repo.refs.items() if n not in repo.tags]
                tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": repo.refs[n]} for n in sorted(repo.tags)]
                self._json(200, {"branches": branches, "tags": tags, "converts": []})
                return
            if rest[0] == "commits":
                commit = self._commit(repo, rest[1])
                if commit:
                    self._json(200, [{"id": c.oid, "title": c.message, "message": c.message, "authors": [],
                                      "date": c.date} for c in repo.history(commit)])
                return
        self._resolve_file(head=False)

    def _tree_entry(self, path: str, data: bytes) -> dict:
        """A file as the tree and paths-info endpoints list it: git sha1, and LFS sha256 for LFS files."""
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        info = self.hub.file_entry(path, data, True)
        if "lfs" in info:
            entry["lfs"] = {"oid": info["lfs"]["sha256"], "size": len(data), "pointerSize": 134}
        return entry

    def _resolve_file(self, head: bool) -> None:
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(404, "EntryNotFound", f"no route for {self.path}")
            return
        repo = self._repo(f"{parts[0]}/{parts[1]}")
        commit = repo and self._commit(repo, parts[3])
        if not commit:
            return
        path = "/".join(parts[4:])
        if path not in commit.files:
            self._error(404, "EntryNotFound", f"{path} does not exist at {commit.oid}")
            return
        data = commit.files[path]
        info = self.hub.file_entry(path, data, True)
        headers = {"X-Repo-Commit": commit.oid, "Content-Length": str(len(data))}
        if "lfs" in info:
            headers.update({"ETag": f'"{info["lfs"]["sha256"]}"', "X-Linked-Etag": f'"{info["lfs"]["sha256"]}"',
                            "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{info["blobId"]}"'
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and not head:  # safetensors header reads
            first, _, last = wanted[len("bytes="):].partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self.server.ranged.append((path, start, end))
            self._send(206, data[start:end + 1], headers)
            return
        if not head:
            self.server.served.append(path)
        self._send(200, data, headers, head=head)

    def do_POST(self) -> None:
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        body = self._body()
        if parts == ["api", "repos", "create"]:
            request = json.loads(body)
            name = request["name"]
            repo_id = f"{request['organization']}/{name}" if request.get("organization") else name
            url = f"{self.server.url}/{repo_id}"
            with self.hub.lock:
                if repo_id in self.hub.repos:
                    self._json(409, {"error": "You already created this model repo", "url": url})
                    return
                self.hub.repos[repo_id] = Repo(private=bool(request.get("private")))
            self._json(200, {"url": url, "name": repo_id, "id": repo_id})
            return
        if parts == ["api", "validate-yaml"]:
            self._json(200, {"errors": [], "warnings": []})
            return
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo = self._repo(repo_id)
            if repo is None:
                return
            if action == "preupload":
                files = json.loads(body)["files"]
                self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in files]})
                return
            if action == "tag":
                commit = self._commit(repo, revision)
                if commit:
                    tag = json.loads(body)["tag"]
                    repo.refs[tag] = commit.oid
                    repo.tags.add(tag)
                    self._json(200, {})
                return
            if action == "commit":
                self._create_commit(repo_id, repo, revision, body)
                return
            if action == "paths-info":
                commit = self._commit(repo, revision)
                if commit:
                    paths = parse_qs(body.decode()).get("paths", [])
                    self._json(200, [self._tree_entry(p, commit.files[p]) for p in paths if p in commit.files])
                return
        self._error(404, "EntryNotFound", f"no route for POST {self.path}")

    def _create_commit(self, repo_id: str, repo: Repo, branch: str, body: bytes) -> None:
        files, deleted, summary, parent = {}, [], "", None
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                summary, parent = value.get("summary", ""), value.get("parentCommit")
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
        current = repo.resolve(branch)
        if parent and current and parent != current.oid:
            self._error(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")
            return
        oid = self.hub.commit(repo_id, files, summary, branch=branch, deleted=tuple(deleted))
        self._json(200, {"commitUrl": f"{self.server.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hub = Hub()
        self.served: list[str] = []  # paths of whole-file GETs, for tests that count weight downloads
        self.ranged: list[tuple[str, int, int]] = []  # (path, first, last) of Range GETs
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
