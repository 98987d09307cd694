"""The Docker engine as the reconciler sees it: reachable or not, which images are here, which containers are ours.

The address comes from DOCKER_HOST, as the docker CLI's does. A client is made lazily and dropped
on any connection failure, so an engine that comes back is used again without a daemon restart.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.base.sdk_errors import docker_errors, request_errors

if TYPE_CHECKING:  # the SDK loads with the first client (sdk_errors says why)
    import docker
    from docker.models.containers import Container

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
LOCAL_SCHEMES = ("unix://", "npipe://")
KEPT_CONNECTIONS = 32  # exchanges at once that keep their connection: apply's 20 starts, the event stream, checks
SOCKET_URL = "http+docker://localhost"  # what the SDK's requests to a local socket are addressed to
OWNER_LABEL = "dev.localaistack.owner"
WORKLOAD_LABEL = "dev.localaistack.workload"
CONFIG_HASH_LABEL = "dev.localaistack.config-hash"
LAUNCH_LABEL = "dev.localaistack.launch"


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS


def intact_launch(labels: Mapping[str, str]) -> str | None:
    """The launch label's text, if the hash label beside it is that text's: labels edited or cut since the container
    was made say nothing about how it was launched (the container is replaced, not adopted). The hash is of the
    label's text, not of a model, so a newer reconciler's model still reads an older label."""
    text = labels.get(LAUNCH_LABEL, "")
    return text if hashlib.sha256(text.encode()).hexdigest() == labels.get(CONFIG_HASH_LABEL) else None


class EngineUnavailable(Exception):
    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        self.message = f"Docker engine at {address} is not reachable: {detail}"
        super().__init__(self.message)


@dataclass(frozen=True)
class ImageFacts:
    id: str
    user: str | None


@dataclass(frozen=True)
class Listed:
    """One container as a listing shows it, without an inspection: whose it is, its state ("running", "exited") and
    its name."""

    id: str
    workload: str
    state: str
    name: str = ""


class DockerEngine:
    def __init__(self, address: str | None = None, timeout: float = 10.0) -> None:
        self.address = address or engine_address()
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        self._release_on_connecting: str | None = None  # what the engine said it was when the client was made
        self._pinged_on_connecting = False  # the client was made on the engine's answer to a ping
        self._lock = threading.Lock()

    @contextmanager
    def reach(self, release: bool = False) -> Iterator[docker.DockerClient]:
        """A client for one exchange; connection failures become EngineUnavailable, the engine's own errors stay.
        `release`: the exchange asks the engine's release (a connection made for it asks GET /version, which says
        both that and the API version)."""
        try:
            with self._lock:
                if self._client is None:
                    self._client, self._release_on_connecting = self._connect(release)
                    self._pinged_on_connecting = not release
                client = self._client
            yield client
        except docker_errors.APIError:
            raise
        except (docker_errors.DockerException, request_errors.RequestException, OSError) as error:
            with self._lock:
                self._client = None
            raise EngineUnavailable(self.address, _plain(error)) from None

    def _connect(self, release: bool) -> tuple[docker.DockerClient, str | None]:
        """A client speaking the engine's API version; with `release`, the engine's release from the same answer (the
        SDK's version="auto" asks GET /version and keeps only the API version). Without, the API version is the one
        the engine's GET /_ping names in its API-Version header, as the docker CLI negotiates it: GET /version makes
        the engine ask containerd for its components' versions, 7.5 ms of a reader's first exchange against 2 ms."""
        socket = self.address.removeprefix("unix://")
        if socket != self.address and not os.path.exists(socket):  # no engine runs here: that needs no SDK to tell
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), socket)
        from docker.constants import MINIMUM_DOCKER_API_VERSION

        asking = self._client_of(MINIMUM_DOCKER_API_VERSION)
        try:
            pinged = None if release else asking.api.get(f"{asking.api.base_url}/_ping")
            if pinged is not None and pinged.ok and pinged.headers.get("Api-Version"):
                return self._client_of(pinged.headers["Api-Version"]), None
            answer = asking.api.version(api_version=False)  # an engine older than the header (API 1.25) says it here
            return self._client_of(answer["ApiVersion"]), answer.get("Version")
        except (docker_errors.APIError, KeyError, TypeError) as error:  # as the SDK's own "auto" says it
            raise docker_errors.DockerException(f"Error while fetching server API version: {error}") from None
        finally:
            asking.close()

    def _client_of(self, api_version: str) -> docker.DockerClient:
        import docker

        client = docker.DockerClient(base_url=self.address, version=api_version, timeout=int(self.timeout),
                                     max_pool_size=KEPT_CONNECTIONS)
        # an engine on a local socket is no web host: ~/.netrc's credentials for `localhost` went to it as a Basic
        # Authorization header, and the proxy variables were looked up for every call (a fifth of its CPU)
        client.api.trust_env = not self.address.startswith(LOCAL_SCHEMES)
        if self.address.startswith("unix://"):
            _one_pool(client.api)
        return client

    def unavailable(self) -> str | None:
        """Why the engine cannot be used now, or None when it answers."""
        try:
            with self.reach() as client:
                with self._lock:  # the connection's own ping is news once; later questions ask again
                    pinged, self._pinged_on_connecting = self._pinged_on_connecting, False
                if not pinged:
                    client.ping()
        except EngineUnavailable as error:
            return error.message
        except docker_errors.APIError as error:
            return f"Docker engine at {self.address} answered with an error: {error.explanation or error}"
        return None

    def version(self) -> str | None:
        """The engine's release (e.g. "27.3.1"), None if it does not say; raises EngineUnavailable like every exchange."""
        with self.reach(release=True) as client:
            with self._lock:  # the connection's own answer is news once; later questions ask again
                release, self._release_on_connecting = self._release_on_connecting, None
            return release if release is not None else client.version().get("Version")

    def image(self, reference: str) -> ImageFacts | None:
        with self.reach() as client:
            try:
                image = client.images.get(reference)
            except docker_errors.ImageNotFound:
                return None
        config = image.attrs.get("Config") or {}
        return ImageFacts(image.id, config.get("User") or None)

    def bridge_address(self) -> str | None:
        """The host's IPv4 address on the default bridge: what host-gateway means inside a container. None: the
        engine has no such network (or does not answer)."""
        try:
            with self.reach() as client:
                network = client.networks.get("bridge")
        except (EngineUnavailable, docker_errors.APIError):
            return None
        configs = (network.attrs.get("IPAM") or {}).get("Config") or []
        return next((c["Gateway"] for c in configs if isinstance(c, dict) and c.get("Gateway") and ":" not in c["Gateway"]), None)

    def listed(self, owner: str) -> list[Listed]:
        """Every container of this owner's that names its workload: one list call, no per-container inspect."""
        with self.reach() as client:
            containers = client.containers.list(all=True, filters={"label": [f"{OWNER_LABEL}={owner}"]}, sparse=True)
        found = [Listed(container.id, (container.attrs.get("Labels") or {}).get(WORKLOAD_LABEL, ""),
                        str(container.attrs.get("State", "")), ((container.attrs.get("Names") or [""])[0]).lstrip("/"))
                 for container in containers]
        return [listed for listed in found if listed.workload]

    def inspect(self, container_id: str) -> Container | None:
        """One container in full; None if it is gone."""
        with self.reach() as client:
            try:
                return client.containers.get(container_id)
            except docker_errors.NotFound:
                return None

    def output(self, owner: str, name: str, tail: int, follow: bool) -> Iterator[bytes] | None:
        """What the workload's container with intact labels wrote (the running one, as status reports it, before one a
        replacement made and never started; else the newest), straight from the engine (`tail`: its last
        lines, 0 all; `follow`: then as it writes more); None when there is none to ask. One listing, no inspection:
        the listing shows each container's labels and creation, and reading the output needs no model of them."""
        labels = [f"{OWNER_LABEL}={owner}", f"{WORKLOAD_LABEL}={name}"]
        try:
            with self.reach() as client:
                listed = client.api.containers(all=True, filters={"label": labels})
                intact = [found for found in listed if intact_launch(found.get("Labels") or {}) is not None]
                if not intact:
                    return None
                current = max(intact, key=lambda found: (found.get("State") == "running", found.get("Created", 0)))
                output = client.api.logs(current["Id"], stdout=True, stderr=True, tail=tail or "all", stream=follow,
                                         follow=follow)
        except (EngineUnavailable, docker_errors.APIError):  # an engine gone is "none to ask", not a traceback
            return None
        return output if follow else iter([output])

    def owned(self, owner: str, name: str | None = None) -> list[Container]:
        """Every container labelled as this owner's (one workload's, if named), running or not."""
        labels = [f"{OWNER_LABEL}={owner}"] + ([f"{WORKLOAD_LABEL}={name}"] if name else [])
        with self.reach() as client:
            return client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)


def _one_pool(api: docker.APIClient) -> None:
    """Every request to the engine's socket shares one pool of kept-alive connections. The SDK's socket adapter keys
    its pools by the whole request URL, path and query too: each container's inspection got its own pool, and so its
    own new connection (20 connections for a status over 20 containers, a new one per look once 25 pools churn)."""
    adapter = api.get_adapter(SOCKET_URL)
    pool_of = adapter.get_connection
    adapter.get_connection = lambda url, proxies=None: pool_of(SOCKET_URL, proxies)


def _plain(error: BaseException) -> str:
    """The innermost reason (e.g. 'No such file or directory'), not requests' nested repr."""
    while error.__context__ is not None and not str(error).strip():
        error = error.__context__
    text = str(error)
    for marker in ("FileNotFoundError", "ConnectionRefusedError", "Connection refused", "No such file or directory"):
        if marker in text:
            return {"FileNotFoundError": "no socket there (is the engine running?)",
                    "No such file or directory": "no socket there (is the engine running?)"}.get(marker, "connection refused")
    return text[:300]
