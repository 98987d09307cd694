"""A restored known-good version runs the bytes it was proven with: the executable's digest, the image ID and the
model's digest are taken when it is proven, and a restore uses them or refuses (nothing is silently substituted)."""

from __future__ import annotations

from reconciler.api.launch import AnyLaunch, ContainerLaunch
from reconciler.api.rollout import Pins
from reconciler.diff.engines import Blocked
from reconciler.diff.footprint import ModelView
from reconciler.drive.artifacts import ArtifactCache
from reconciler.observe.docker_engine import DockerEngine, ImageFacts
from reconciler.observe.host import file_sha256, observe_model

KNOWN_GOOD_UNAVAILABLE = "KnownGoodUnavailable"


def pins_of(launch: AnyLaunch | None, model: ModelView | None) -> Pins:
    """What runs now, for a version being proven: `model` is the Model's view (its digest counts only when the
    file it names is the one the launch serves)."""
    if launch is None:
        return Pins()
    if isinstance(launch, ContainerLaunch):
        return Pins(image_id=launch.image_id)
    served = model is not None and model.presence is not None and model.presence.identity == launch.model
    return Pins(executable=launch.executable,
                executable_sha256=file_sha256(launch.executable) if launch.executable else None,
                model_sha256=model.variant.sha256 if served and model and model.variant else None)


def pinned_model(pins: Pins, view: ModelView | None, cache: ArtifactCache) -> ModelView | None:
    """The model bytes the known-good version served: the Model's current choice when it is the same digest,
    else the cache's copy (kept for it: `models gc` leaves known-good digests alone)."""
    digest = pins.model_sha256
    if digest is None or view is not None and view.variant is not None and view.variant.sha256 == digest:
        return view
    path = cache.lookup(digest)
    if path is None:
        return ModelView(None, None, problem=Blocked(KNOWN_GOOD_UNAVAILABLE, f"the known-good version served the model "
                                                     f"sha256 {digest}, which is no longer on this host"))
    return ModelView(observe_model(path), None)


def pinned_executable(pins: Pins, executable: str | None) -> Blocked | None:
    """Why the executable found now is not the one the known-good version ran, if it is not."""
    if pins.executable_sha256 is None:
        return None
    actual = file_sha256(executable) if executable else None
    if actual == pins.executable_sha256:
        return None
    now = f"{executable} has sha256 {actual}" if actual else f"{executable or pins.executable} cannot be read"
    return Blocked(KNOWN_GOOD_UNAVAILABLE, f"the known-good version ran {pins.executable} with sha256 "
                                           f"{pins.executable_sha256}; {now}: not restored with another executable")


def pinned_image(pins: Pins, image: ImageFacts | None, engine: DockerEngine) -> ImageFacts | Blocked | None:
    """The image the known-good version ran, by ID, even if its tag names another one now. Raises
    EngineUnavailable."""
    if pins.image_id is None or image is not None and image.id == pins.image_id:
        return image
    pinned = engine.image(pins.image_id)
    if pinned is None:
        return Blocked(KNOWN_GOOD_UNAVAILABLE, f"the known-good version ran the image {pins.image_id}, which the "
                                               "container engine no longer has")
    return pinned
