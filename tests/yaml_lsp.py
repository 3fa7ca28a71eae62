"""A minimal Language Server Protocol client for the real yaml-language-server (Node), over stdio.

It speaks just enough LSP to do what an editor does: initialize, push the `yaml.schemas` setting,
open documents and collect the `textDocument/publishDiagnostics` the server sends back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BIN = ROOT / ".ci" / "node" / "node_modules" / ".bin"


def find_tool(name: str) -> str | None:
    """A Node tool from the CI prefix (.ci/node, see .ci/run) or from PATH."""
    local = LOCAL_BIN / name
    if local.exists() and shutil.which("node"):
        return str(local)
    return shutil.which(name)


class YamlLanguageServer:
    """One yaml-language-server process; `diagnostics(uri)` waits for the server's report on a document."""

    def __init__(self, executable: str, settings: dict[str, Any], root: Path) -> None:
        self._proc = subprocess.Popen([executable, "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, env={**os.environ, "NODE_NO_WARNINGS": "1"})
        self._settings = settings
        self._next_id = 0
        self._lock = threading.Condition()
        self._responses: dict[int, Any] = {}
        self._diagnostics: dict[str, list[dict[str, Any]]] = {}
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self._request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(),
                                     "capabilities": {"textDocument": {"publishDiagnostics": {}}},
                                     "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}]})
        self._notify("initialized", {})
        self._notify("workspace/didChangeConfiguration", {"settings": settings})

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self._proc.stdin is not None
        self._proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self._proc.stdin.flush()

    def _notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})

    def _request(self, method: str, params: Any, timeout: float = 30.0) -> Any:
        self._next_id += 1
        request_id = self._next_id
        self._send({"id": request_id, "method": method, "params": params})
        with self._lock:
            if not self._lock.wait_for(lambda: request_id in self._responses, timeout):
                raise TimeoutError(f"yaml-language-server did not answer {method}")
            return self._responses.pop(request_id)

    def _read_loop(self) -> None:
        stream = self._proc.stdout
        assert stream is not None
        while True:
            headers: dict[str, str] = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            if not headers:
                return
            self._dispatch(json.loads(stream.read(int(headers["content-length"]))))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:  # a request from the server
            result: Any = None
            if message["method"] == "workspace/configuration":  # answered from the settings given
                result = [self._settings.get(item.get("section"), None) for item in message["params"]["items"]]
            self._send({"id": message["id"], "result": result})
            return
        with self._lock:
            if message.get("method") == "textDocument/publishDiagnostics":
                self._diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]
            elif "id" in message:
                self._responses[message["id"]] = message.get("result", message.get("error"))
            self._lock.notify_all()

    def open(self, uri: str, text: str) -> None:
        with self._lock:
            self._diagnostics.pop(uri, None)
        self._notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml",
                                                               "version": 1, "text": text}})

    def diagnostics(self, uri: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first diagnostics published for `uri` after it was opened."""
        with self._lock:
            if not self._lock.wait_for(lambda: uri in self._diagnostics, timeout):
                raise TimeoutError(f"no diagnostics for {uri} within {timeout}s")
            return self._diagnostics[uri]

    def hover(self, uri: str, line: int, character: int) -> Any:
        return self._request("textDocument/hover", {"textDocument": {"uri": uri},
                                                    "position": {"line": line, "character": character}})

    def close(self) -> None:
        try:
            self._request("shutdown", None, timeout=5)
            self._notify("exit", None)
            self._proc.wait(timeout=5)
        except (TimeoutError, OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()


def schema_settings(schema_path: Path, glob: str = "**/*.yaml") -> dict[str, Any]:
    """What a user puts in VS Code's settings.json (README "Editor setup")."""
    return {"yaml": {"validate": True, "hover": True, "completion": True, "format": {"enable": False},
                     "schemaStore": {"enable": False}, "schemas": {schema_path.as_uri(): glob}}}
