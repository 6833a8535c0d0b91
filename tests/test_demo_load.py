"""Load test of the demo's server: one abandoned maximal request cannot hold it, and a full queue says so.

The real server (:func:`mnist_diffusion.app.demo.build_demo` and :func:`mnist_diffusion.app.demo.serve`) runs
in this process on a free loopback port with a tiny untrained model, whose network calls a forward hook counts
(and holds at one point, so that every step of the test happens in a known order). Nothing here depends on the
machine's speed: the timeouts are safety nets against a hang.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from mnist_diffusion.app import demo as app_demo

SAFETY_TIMEOUT_S = 600
NUM_TRAIN_TIMESTEPS = 100
BUDGET = 2048
BIG_IMAGES, BIG_STEPS = 64, 32  # the largest request the budget allows: 64 x 32 = 2048 network calls x images
HOLD_AT = 3  # the abandoned run's network call at which the hook holds it until the test lets it go
MAX_QUEUE = 4
SMALL = 3  # network calls of each small request (one image)


@dataclass
class Gate:
    """A forward pre-hook: counts network calls by batch size and holds the big run at its HOLD_AT-th call."""

    calls: Counter = field(default_factory=Counter)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, module, args) -> None:
        batch = args[0].shape[0]
        with self.lock:
            self.calls[batch] += 1
            count = self.calls[batch]
        if batch == BIG_IMAGES and count == HOLD_AT:
            self.held.set()
            assert self.release.wait(SAFETY_TIMEOUT_S), "the test never released the held run"


@dataclass
class Server:
    api: str
    model: str
    gate: Gate
    fn_index: dict[str, int]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """The demo serving an untrained tiny Gaussian DDPM (T = 100), a budget of 2048 and a queue of 4."""
    from diffusers import DDPMPipeline

    from mnist_diffusion.models import CourseworkCNN
    from mnist_diffusion.schedulers import ddpm_scheduler

    folder = tmp_path_factory.mktemp("load") / "tiny"
    unet = CourseworkCNN(
        n_hidden=(4, 4),
        time_embedding_frequencies=4,
        time_embedding_dim=8,
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    )
    scheduler = ddpm_scheduler("linear", num_train_timesteps=NUM_TRAIN_TIMESTEPS)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)

    store = app_demo.ModelStore()
    # The time limit is out of the way: this test is about clients that leave (test_demo.py tests the limit).
    limits = app_demo.Limits(max_image_steps=BUDGET, time_limit_s=SAFETY_TIMEOUT_S, max_queue=MAX_QUEUE)
    demo = app_demo.build_demo([str(folder)], test_data=None, store=store, limits=limits)
    gate = Gate()
    store.get(str(folder)).unet.register_forward_pre_hook(gate)
    port = _free_port()
    app_demo.serve(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        base = f"http://127.0.0.1:{port}"
        config = httpx.get(f"{base}/config", timeout=SAFETY_TIMEOUT_S).json()
        fn_index = {dep["api_name"]: dep["id"] for dep in config["dependencies"] if dep.get("api_name")}
        yield Server(f"{base}{config['api_prefix']}", str(folder), gate, fn_index)
    finally:
        gate.release.set()
        demo.close()


def _join(server: Server, session: str, num_images: int, steps: int, model: str | None = None):
    body = {
        # model, sampler, steps, images, seed, digit ("any": unconditional), guidance scale
        "data": [model or server.model, "ddpm", steps, num_images, 0, "any", 1.0],
        "fn_index": server.fn_index["generate"],
        "session_hash": session,
    }
    return httpx.post(f"{server.api}/queue/join", json=body, timeout=SAFETY_TIMEOUT_S)


def _result(server: Server, session: str) -> dict:
    """The ``process_completed`` message of the session's one request, read from its event stream."""
    with httpx.stream(
        "GET", f"{server.api}/queue/data", params={"session_hash": session}, timeout=SAFETY_TIMEOUT_S
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[len("data:") :])
                if message["msg"] in ("process_completed", "unexpected_error"):
                    return message
    pytest.fail(f"the stream of session {session} ended without a result")


def _queue_size(server: Server) -> int:
    return httpx.get(f"{server.api}/queue/status", timeout=SAFETY_TIMEOUT_S).json()["queue_size"]


def _wait_for(condition, what: str) -> None:
    done = threading.Event()
    for _ in range(SAFETY_TIMEOUT_S * 10):
        if condition():
            return
        done.wait(0.1)
    pytest.fail(f"timed out waiting until {what}")


def _check_samples(message: dict, num_images: int) -> None:
    assert message["msg"] == "process_completed" and message["success"], message
    gallery, animation, timing = message["output"]["data"]
    assert len(gallery) == num_images and animation["path"].endswith(".gif")
    assert timing.startswith(f"{num_images} image(s), DDPM (ancestral), {SMALL} steps")


def test_an_abandoned_maximal_request_stops_and_the_server_keeps_answering(server: Server) -> None:
    gate = server.gate
    # A client asks for the largest request the budget allows, and queues a second one behind it.
    leaving = uuid.uuid4().hex
    assert _join(server, leaving, BIG_IMAGES, BIG_STEPS).status_code == 200
    stream_context = httpx.stream(
        "GET", f"{server.api}/queue/data", params={"session_hash": leaving}, timeout=SAFETY_TIMEOUT_S
    )
    stream = stream_context.__enter__()
    try:
        lines = stream.iter_lines()  # one iterator: closing an iterator of the stream would close the stream
        while "process_starts" not in next(lines):
            pass
        assert gate.held.wait(SAFETY_TIMEOUT_S), "the maximal request never reached its third network call"
        assert _join(server, leaving, 3, SMALL).status_code == 200
        assert _queue_size(server) == 1

        # Five more clients at once: the queue takes three (4 in all), and refuses the others.
        sessions = [uuid.uuid4().hex for _ in range(5)]
        with ThreadPoolExecutor(len(sessions)) as pool:
            responses = list(pool.map(lambda session: _join(server, session, 1, SMALL), sessions))
        accepted = [s for s, response in zip(sessions, responses, strict=True) if response.status_code == 200]
        refused = [response for response in responses if response.status_code != 200]
        assert len(accepted) == MAX_QUEUE - 1
        assert [response.status_code for response in refused] == [503] * 2
        assert all("Queue is full" in response.json()["detail"] for response in refused)
    finally:
        # The first client leaves while its run is held at its third network call.
        stream_context.__exit__(None, None, None)

    # The server notices: it drops the client's waiting request (and marks its running one) at once.
    _wait_for(lambda: _queue_size(server) == MAX_QUEUE - 1, "the departed client's request is dropped")
    gate.release.set()

    for session in accepted:
        _check_samples(_result(server, session), 1)
    later = uuid.uuid4().hex
    assert _join(server, later, 1, SMALL).status_code == 200
    _check_samples(_result(server, later), 1)

    # The abandoned run stopped within a few network calls of the one it was held at, not at its 32nd; its
    # waiting request never ran; every small request ran all of its steps.
    assert HOLD_AT <= gate.calls[BIG_IMAGES] <= HOLD_AT + app_demo.STEPS_AHEAD
    assert gate.calls[3] == 0
    assert gate.calls[1] == SMALL * (len(accepted) + 1)


def test_requests_over_the_budget_or_for_other_models_are_refused_up_front(server: Server) -> None:
    before = Counter(server.gate.calls)
    session = uuid.uuid4().hex
    assert _join(server, session, BIG_IMAGES, BIG_STEPS + 1).status_code == 200
    message = _result(server, session)
    assert not message["success"]
    assert message["output"]["error"] == (
        f"{BIG_IMAGES} image(s) x {BIG_STEPS + 1} network call(s) = {BIG_IMAGES * (BIG_STEPS + 1)} is over "
        f"this demo's limit of {BUDGET} images x network calls per request; ask for fewer images or steps"
    )
    # Another folder on the server, a missing one and a Hub id get the same answer, which names no path.
    for name in (str(Path(server.model).parent), "/no/such/folder", "someone/model"):
        session = uuid.uuid4().hex
        assert _join(server, session, 1, SMALL, model=name).status_code == 200
        message = _result(server, session)
        assert message["output"]["error"] == "unknown model; choose one of the offered models"
    assert server.gate.calls == before
