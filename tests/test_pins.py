"""What a known-good version is pinned to, on real files and a real cache: the executable's digest, the model's."""

from __future__ import annotations

import hashlib
from pathlib import Path

from reconciler.api.kinds import ModelVariant
from reconciler.api.launch import LaunchSpec
from reconciler.api.rollout import Pins
from reconciler.control.pins import KNOWN_GOOD_UNAVAILABLE, pinned_executable, pinned_model, pins_of
from reconciler.diff.engines import Blocked
from reconciler.diff.footprint import ModelView
from reconciler.drive.artifacts import ArtifactCache
from reconciler.observe.host import observe_model


def launch(executable: Path, model: str | None = None) -> LaunchSpec:
    return LaunchSpec(command=(str(executable),), args=(), executable=str(executable), env={}, working_dir="/",
                      memory_limit=None, model=model)


def test_a_proven_native_version_is_pinned_to_its_executable_and_the_model_it_serves(tmp_path: Path) -> None:
    program, weights = tmp_path / "server", tmp_path / "model.gguf"
    program.write_bytes(b"#!/bin/sh\nexec sleep 1000\n")
    weights.write_bytes(b"GGUF weights")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    view = ModelView(observe_model(weights), ModelVariant(name="default", source=str(weights), sha256=digest))

    pins = pins_of(launch(program, view.presence.identity), view)
    assert pins.executable == str(program)
    assert pins.executable_sha256 == hashlib.sha256(program.read_bytes()).hexdigest()
    assert pins.model_sha256 == digest
    # a Model whose file is not the one the launch serves pins nothing about the model
    assert pins_of(launch(program, "elsewhere:1:1"), view).model_sha256 is None


def test_a_restore_refuses_an_executable_that_changed_since_it_was_proven(tmp_path: Path) -> None:
    program = tmp_path / "server"
    program.write_bytes(b"version 1")
    pins = pins_of(launch(program), None)
    assert pinned_executable(pins, str(program)) is None

    program.write_bytes(b"version 2, installed by an upgrade")
    refused = pinned_executable(pins, str(program))
    assert isinstance(refused, Blocked) and refused.reason == KNOWN_GOOD_UNAVAILABLE
    assert pins.executable_sha256 in refused.message and hashlib.sha256(b"version 2, installed by an upgrade").hexdigest() in refused.message
    program.unlink()
    assert "cannot be read" in pinned_executable(pins, None).message
    assert pinned_executable(Pins(), str(program)) is None  # pinned to nothing (a record from before pins): no check


def test_a_restore_serves_the_pinned_model_from_the_cache_or_says_it_is_gone(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "models")
    cache.prepare()
    old = b"the weights the known-good version served"
    digest = hashlib.sha256(old).hexdigest()
    partial = cache.partial_path(digest)
    partial.write_bytes(old)
    cache.install(digest, partial)
    now = ModelView(observe_model(tmp_path / "new.gguf"), ModelVariant(name="default", source="https://example/new.gguf", sha256="b" * 64))

    restored = pinned_model(Pins(model_sha256=digest), now, cache)
    assert restored is not None and restored.problem is None and restored.presence.path == cache.path(digest)
    assert pinned_model(Pins(), now, cache) is now  # nothing pinned: the Model's current choice
    assert pinned_model(Pins(model_sha256="b" * 64), now, cache) is now  # the same digest: the same view

    cache.remove(digest)
    gone = pinned_model(Pins(model_sha256=digest), now, cache)
    assert gone is not None and gone.problem is not None and gone.problem.reason == KNOWN_GOOD_UNAVAILABLE
    assert digest in gone.problem.message
