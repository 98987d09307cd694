"""Model artifacts through the reconciler: fit before fetch, verified download into the cache, served from there."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import urllib.request
from pathlib import Path

import psutil
import pytest
from gguf.constants import GGUFValueType

from tests import crafted_gguf as crafted
from tests.artifact_server import LOOPBACK_SOURCES, ArtifactServer
from tests.conftest import POLICY_YAML, Workspace, wait_for, workload_yaml
from tests.test_engines import ENGINES_POLICY, document, engine_env, free_port
from tests.tiny_gguf import write_tiny_llama


@pytest.fixture
def tiny(tmp_path: Path) -> bytes:
    return write_tiny_llama(tmp_path / "tiny.gguf").read_bytes()


@pytest.fixture(autouse=True)
def loopback_sources(workspace: Workspace) -> None:
    """The artifact server is on loopback: these tests' Policy allows fetching from it."""
    workspace.write("policy.yaml", POLICY_YAML + LOOPBACK_SOURCES)


def model_status(workspace: Workspace) -> dict:
    return workspace.resource_status("model.yaml", "tiny")


def test_a_pinned_url_is_fetched_verified_and_served_from_the_cache(workspace: Workspace, server: ArtifactServer,
                                                                    tiny: bytes, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    digest = hashlib.sha256(tiny).hexdigest()
    url = server.add("tiny.gguf", tiny)
    workspace.write("policy.yaml", ENGINES_POLICY + LOOPBACK_SOURCES)
    port = free_port()
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": digest}) + "---\n" + document(
        "Workload", "chat", {"engine": "llama.cpp", "model": "tiny", "port": port, "llamaCpp": {"contextSize": 128},
                             "health": {"http": {"path": "/v1/models"}, "periodSeconds": 0.2}}))
    assert workspace.cli("apply", "--wait", env=engine_env(None, tmp_path)).returncode == 0
    status = model_status(workspace)
    cached = workspace.state / "models" / "sha256" / digest
    assert status["phase"] == "Available" and status["artifact"]["sha256"] == digest
    assert status["artifact"]["path"] == str(cached) and cached.read_bytes() == tiny
    pid = wait_for(lambda: workspace.pid("model.yaml", "chat"), timeout=30, what="the server on the cached model")
    assert str(cached) in " ".join(psutil.Process(pid).cmdline())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as answer:
        assert json.load(answer)["data"]

    full_gets = [seen for seen in server.gets("tiny.gguf") if seen.range is None or not seen.range.startswith("bytes=0-")]
    server.stop()  # offline: a cached, verified model keeps working and nothing is fetched again
    workspace.cli("apply", env=engine_env(None, tmp_path))
    assert model_status(workspace)["phase"] == "Available"
    assert len(full_gets) == 1


def test_the_first_variant_that_fits_is_chosen_before_anything_is_downloaded(workspace: Workspace, server: ArtifactServer,
                                                                            tiny: bytes) -> None:
    big = server.add("f16.gguf", b"\0" * 64)  # never downloaded: declared too big for this host
    small = server.add("q4.gguf", tiny)
    variants = [{"name": "f16", "source": big, "sha256": "a" * 64, "size": "4Ti"},
                {"name": "q4", "source": small, "sha256": hashlib.sha256(tiny).hexdigest()}]
    workspace.write("model.yaml", document("Model", "tiny", {"variants": variants}))
    planned = workspace.cli("plan").stdout
    assert "chose q4" in planned and "rejected f16" in planned, planned
    workspace.cli("apply")
    decision = next(r for r in workspace.evidence("model.yaml") if r["event"] == "decision")
    assert decision["modelSelection"].startswith("chose q4")
    status = model_status(workspace)
    assert status["phase"] == "Available" and status["artifact"]["variant"] == "q4"
    assert "chose q4" in status["message"] and "rejected f16" in status["message"]
    assert not [seen for seen in server.gets("f16.gguf") if seen.range is None], "the rejected variant is never fetched"


def test_no_variant_fits_means_nothing_is_downloaded(workspace: Workspace, server: ArtifactServer) -> None:
    url = server.add("huge.gguf", b"\0" * 64)
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": "b" * 64, "size": "4Ti"}) + "---\n" +
                    document("Workload", "chat", {"engine": "llama.cpp", "model": "tiny", "port": free_port()}))
    workspace.cli("apply")
    status = model_status(workspace)
    assert (status["phase"], status["conditions"][-1]["reason"]) == ("Unavailable", "NoVariantFits")
    chat = workspace.resource_status("model.yaml", "chat")
    decided = workspace.decision_record("model.yaml", "chat")
    assert chat["placement"] == "unavailable" and decided["placement"]["reason"] == "NoFallback"
    footprint = decided["questions"]["modelFootprint"]
    assert "; no variant fits this host, so none is downloaded: " in footprint["tradeOff"], footprint
    assert "no variant fits this host, so none is downloaded" in status["message"]
    assert not [seen for seen in server.gets("huge.gguf") if seen.range is None]
    assert not list(workspace.state.glob("models/sha256/*")) and not list(workspace.state.glob("models/partial/*"))


def test_wrong_bytes_are_refused_and_a_lost_cache_entry_is_fetched_again(workspace: Workspace, server: ArtifactServer,
                                                                         tiny: bytes) -> None:
    digest = hashlib.sha256(tiny).hexdigest()
    url = server.add("tiny.gguf", tiny, corrupt=True)  # its header is garbage too: the declared size is what fits
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": digest, "size": len(tiny)}))
    workspace.cli("apply")
    status = model_status(workspace)
    assert status["conditions"][-1]["reason"] == "InvalidArtifact" and digest in status["message"]
    assert not (workspace.state / "models" / "sha256" / digest).exists()

    server.add("tiny.gguf", tiny)  # the source is fixed: a later pass (after its back-off) fetches it
    workspace.cli("apply")
    cached = workspace.state / "models" / "sha256" / digest
    assert model_status(workspace)["phase"] == "Available" and cached.exists()
    cached.unlink()  # cache loss: noticed on the next pass and repaired
    workspace.cli("apply")
    assert model_status(workspace)["phase"] == "Available" and cached.read_bytes() == tiny


def test_models_lists_the_cache_and_gc_removes_only_what_no_model_names(workspace: Workspace, server: ArtifactServer,
                                                                        tiny: bytes) -> None:
    digest = hashlib.sha256(tiny).hexdigest()
    workspace.write("model.yaml", document("Model", "tiny", {"source": server.add("tiny.gguf", tiny), "sha256": digest}))
    workspace.cli("apply")
    models = [str(workspace.desired), "--state-dir", str(workspace.state)]
    listed = workspace.cli("models", "list", *models).stdout
    assert digest[:12] in listed and "Model/tiny (default)" in listed
    assert "would remove" not in workspace.cli("models", "gc", *models).stdout
    (workspace.desired / "model.yaml").unlink()
    dry = workspace.cli("models", "gc", *models).stdout
    assert f"would remove {digest[:12]}" in dry and (workspace.state / "models" / "sha256" / digest).exists()
    assert f"removed {digest[:12]}" in workspace.cli("models", "gc", *models, "--yes").stdout
    assert not (workspace.state / "models" / "sha256" / digest).exists()


def test_the_daemon_fetches_in_the_background_and_shows_it(workspace: Workspace, server: ArtifactServer, tiny: bytes) -> None:
    digest = hashlib.sha256(tiny).hexdigest()
    url = server.add("tiny.gguf", tiny, delay=1.0)  # slow enough to be seen downloading
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": digest, "size": len(tiny)}))
    workspace.start_daemon("--resync", "3600")
    wait_for(lambda: (model_status(workspace) or {}).get("phase") == "Downloading", timeout=10, what="the download to show")
    status = wait_for(lambda: (s := model_status(workspace)) and s["phase"] == "Available" and s, timeout=20,
                      what="the fetched model")
    assert status["artifact"]["sha256"] == digest and (workspace.state / "models" / "sha256" / digest).exists()
    (fetched,) = [line for line in workspace.evidence("model.yaml") if line["event"] == "action"]
    assert (fetched["result"], [op["op"] for op in fetched["operations"]]) == ("started", ["fetch"])


def test_bytes_changed_in_place_are_found_by_the_scheduled_rehash(workspace: Workspace, server: ArtifactServer,
                                                                  tiny: bytes) -> None:
    digest = hashlib.sha256(tiny).hexdigest()
    url = server.add("tiny.gguf", tiny)
    workspace.write("model.yaml", document("Model", "tiny", {"source": url, "sha256": digest, "size": len(tiny)}))
    workspace.cli("apply")
    cached = workspace.state / "models" / "sha256" / digest
    before = cached.stat()
    damaged = bytearray(tiny)
    damaged[len(damaged) // 2] ^= 0xFF
    with open(cached, "r+b") as handle:  # same inode, same size, and the mtime put back: only a hash can tell
        handle.write(damaged)
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert workspace.cli("apply").returncode == 0 and cached.read_bytes() != tiny, "a pass alone does not hash"
    gets = len([seen for seen in server.gets("tiny.gguf") if seen.range is None])

    # a schedule of 3.6 s checked every 0.9 s: the sidecar says the entry was verified longer ago than that
    workspace.start_daemon("--resync", "3600", "--model-rehash-hours", "0.001")
    wait_for(lambda: cached.exists() and cached.read_bytes() == tiny, timeout=30, what="the damaged model fetched again")
    assert len([seen for seen in server.gets("tiny.gguf") if seen.range is None]) == gets + 1
    wait_for(lambda: model_status(workspace)["phase"] == "Available", timeout=10, what="the model available again")
    log = workspace.daemon_log.read_text()
    assert f"its bytes no longer match sha256 {digest}; removed, and fetched again" in log, log


def test_a_rollback_serves_the_model_bytes_the_known_good_version_was_proven_with(
        workspace: Workspace, server: ArtifactServer, tiny: bytes, tmp_path: Path) -> None:
    """An update that changes the Model and breaks the server is rolled back onto the old model's bytes (kept in the
    cache for it), not onto the new Model with the old arguments; `models gc` keeps them while they are known-good."""
    pytest.importorskip("llama_cpp")
    other = write_tiny_llama(tmp_path / "other.gguf", name="another-tiny-llama").read_bytes()
    first, second = hashlib.sha256(tiny).hexdigest(), hashlib.sha256(other).hexdigest()
    assert first != second
    port = free_port()

    def version(url: str, digest: str, env: dict[str, str]) -> str:
        return document("Model", "tiny", {"source": url, "sha256": digest}) + "---\n" + document("Workload", "chat", {
            "engine": "llama.cpp", "model": "tiny", "port": port, "llamaCpp": {"contextSize": 128}, "env": env,
            "health": {"http": {"path": "/v1/models"}, "periodSeconds": 0.3, "failureThreshold": 1},
            "update": {"progressDeadlineSeconds": 6, "soakSeconds": 1, "rollback": "Auto"}})

    workspace.write("policy.yaml", ENGINES_POLICY + LOOPBACK_SOURCES)
    workspace.write("model.yaml", version(server.add("tiny.gguf", tiny), first, {}))
    workspace.start_daemon("--resync", "3600", env=engine_env(None, tmp_path))
    proven = lambda: any(e.get("outcome") == "proven" for e in workspace.evidence("model.yaml"))  # noqa: E731
    wait_for(proven, timeout=60, what="generation 1 proven")
    cached = workspace.state / "models" / "sha256"

    # a new model and an API key (llama-cpp-python reads API_KEY) the health check does not send: never Ready
    workspace.write("model.yaml", version(server.add("other.gguf", other), second, {"API_KEY": "not-sent"}))
    chat = lambda: workspace.resource_status("model.yaml", "chat") or {}  # noqa: E731
    wait_for(lambda: chat().get("phase") == "RolledBack", timeout=60, what="generation 2 rolled back")
    wait_for(lambda: workspace.condition("model.yaml", "chat")["status"] == "True", timeout=30, what="Ready again")
    served = psutil.Process(chat()["pid"])
    assert str(cached / first) in " ".join(served.cmdline()) and "API_KEY" not in served.environ()  # the old bytes and env
    assert (cached / second).exists()  # the new Model was fetched: the failed version did run on it

    models = [str(workspace.desired), "--state-dir", str(workspace.state)]
    listed = workspace.cli("models", "list", *models).stdout
    assert "Workload/chat (known-good generation 1)" in listed and "Workload/chat (running)" in listed
    assert first[:12] not in workspace.cli("models", "gc", *models).stdout  # no Model names it, yet it is kept


def crafted_model(workspace: Workspace, good: Path | None = None) -> None:
    """The files of the report, as two variants of one Model: arrays nested 5,000 deep (60 kB), and a string where
    general.alignment is a UINT32; then, when given, a good file as a third."""
    models = workspace.desired / "models"
    models.mkdir(exist_ok=True)
    deep = crafted.entry("tokenizer.ggml.x", GGUFValueType.ARRAY, crafted.nested(5000))
    (models / "deep.gguf").write_bytes(crafted.header([*crafted.llama(), deep]))
    (models / "aligned.gguf").write_bytes(crafted.header([*crafted.llama(), crafted.text("general.alignment", "32")]))
    variants = [{"name": "deep", "source": "models/deep.gguf"}, {"name": "aligned", "source": "models/aligned.gguf"}]
    if good is not None:
        variants.append({"name": "good", "source": f"models/{good.name}"})
    workspace.write("model.yaml", document("Model", "crafted", {"variants": variants}))


def test_a_crafted_gguf_makes_its_model_invalid_and_leaves_the_rest_reconciled(workspace: Workspace) -> None:
    """It raised RecursionError (and a TypeError for the alignment) out of every pass: a traceback from plan, and
    after a daemon restart nothing in the folder was reconciled until the file was removed."""
    crafted_model(workspace)
    workspace.write("other.yaml", workload_yaml("other"))
    for start in ("first start", "restart"):
        workspace.start_daemon("--resync", "3600")
        pid = wait_for(lambda: workspace.pid("other.yaml", "other"), timeout=20, what=f"the other workload ({start})")
        os.kill(pid, signal.SIGKILL)  # passes go on: its death is seen and it is restarted
        wait_for(lambda: workspace.pid("other.yaml", "other") not in (None, pid), timeout=20, what=f"a restart ({start})")
        status = wait_for(lambda: (s := workspace.resource_status("model.yaml", "crafted")) and s.get("message") and s,
                          timeout=20, what="the Model's status")
        assert (status["phase"], status["conditions"][-1]["reason"]) == ("Failed", "InvalidModel"), status
        assert "deep: models/deep.gguf is not a GGUF model: arrays are nested more than 8 deep" in status["message"]
        assert "aligned: models/aligned.gguf is not a GGUF model: general.alignment is a STRING" in status["message"]
        if start == "restart":  # a fixed file is read again, not judged by what the daemon read before
            write_tiny_llama(workspace.desired / "models" / "deep.gguf")
            workspace.write("model.yaml", (workspace.desired / "model.yaml").read_text())
            wait_for(lambda: "chose deep" in workspace.resource_status("model.yaml", "crafted").get("message", ""),
                     timeout=20, what="the fixed file chosen")
        assert workspace.stop_daemon() == 0
        for command in ("plan", "status") if start == "first start" else ():
            shown = workspace.cli(command)
            assert "Traceback" not in shown.stderr and "deep.gguf is not a GGUF model" in shown.stdout, shown
    assert "Traceback" not in workspace.daemon_log.read_text()


def test_a_good_variant_is_chosen_past_crafted_ones(workspace: Workspace) -> None:
    (workspace.desired / "models").mkdir()
    crafted_model(workspace, write_tiny_llama(workspace.desired / "models" / "tiny.gguf"))
    planned = workspace.cli("plan")
    assert "Traceback" not in planned.stderr and "chose good" in planned.stdout, planned
    assert "rejected deep: models/deep.gguf is not a GGUF model: arrays are nested" in planned.stdout


def test_a_model_s_fetch_is_an_operation_in_the_plan_and_the_evidence(workspace: Workspace, tiny: bytes) -> None:
    """A file:// source is fetched into the cache like a URL: the plan shows the fetch with its cause (which variant,
    from where, why absent), the evidence shows it decided and done, and a wrong digest shows it failed."""
    weights = workspace.desired / "weights"
    weights.mkdir()
    (weights / "tiny.gguf").write_bytes(tiny)
    digest, source = hashlib.sha256(tiny).hexdigest(), f"file://{weights / 'tiny.gguf'}"
    workspace.write("model.yaml", document("Model", "tiny", {"source": source, "sha256": digest}))
    fetch = {"op": "fetch", "cause": f"variant default from {source}: not in the cache"}
    planned = workspace.cli("plan", "-o", "json")
    (row,) = [row for row in json.loads(planned.stdout) if row["resource"] == "Model/tiny"]
    assert (planned.returncode, row["action"], row["operations"]) == (2, "create", [fetch]), planned.stdout
    assert f"[operations: fetch (variant default from {source}: not in the cache)]" in workspace.cli("plan").stdout

    assert workspace.cli("apply").returncode == 0
    decided, done = [line for line in workspace.evidence("model.yaml") if line["resource"] == "Model/tiny"]
    assert (decided["event"], decided["operations"]) == ("decision", [fetch])
    assert (done["event"], done["result"], done["operations"]) == ("action", "done", [fetch])
    assert (workspace.state / "models" / "sha256" / digest).read_bytes() == tiny
    assert workspace.cli("plan").returncode == 0, "a fetched model is in sync: nothing more to fetch"

    (workspace.state / "models" / "sha256" / digest).unlink()
    (weights / "tiny.gguf").write_bytes(tiny[:-1] + b"!")  # the source now has other bytes: the fetch fails
    assert workspace.cli("apply").returncode == 0
    decided, failed = [line for line in workspace.evidence("model.yaml") if line["resource"] == "Model/tiny"][2:]
    assert (decided["action"], decided["cause"]) == ("create", fetch["cause"])
    assert (failed["result"], failed["failedOperation"], failed["failure"]["reason"]) == ("failed", fetch, "InvalidArtifact")
    assert "operations" not in failed, "nothing was done"
