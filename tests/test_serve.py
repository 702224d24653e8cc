"""sdrt serve over real HTTP: a uvicorn server in a subprocess on the tiny export; A1111's routes, images equal to the
Python API's, batching, load, bad requests, auth; and a 2-replica Ray Serve deployment."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from sdrt.runtime import Pipeline  # noqa: E402

SMALL = {"width": 64, "height": 64, "steps": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder, *args: str):
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.proc = subprocess.Popen([sys.executable, "-m", "sdrt.cli", "serve", str(folder), "--port",
                                      self.url.rsplit(":", 1)[1], *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.client = httpx.Client(base_url=self.url, timeout=120)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            time.sleep(0.3)
        raise RuntimeError("server not ready in 120 s")

    def log(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=30)[0]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.client.close()


@pytest.fixture(scope="module")
def folder(export_dir):
    return export_dir("tiny")


@pytest.fixture(scope="module")
def server(folder):
    s = Server(folder, "--max-batch", "4", "--max-queue", "64")
    yield s
    s.close()


@pytest.fixture(scope="module")
def python_api(folder):
    with Pipeline.load(folder) as pipe:
        yield pipe


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(_image(b64).convert("RGB"), dtype=np.int16)


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _metric(server: Server, name: str) -> float:
    """A sample's value from /metrics: ``name`` with its labels, e.g. 'calls_total{component="unet"}'."""
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[-1])
    return 0.0


def _assert_same(b64: str, image: Image.Image, levels: int = 0) -> None:
    """The served image against the Python API's: equal, or within ``levels`` where a batch's GEMMs round apart."""
    diff = np.abs(_pixels(b64) - np.asarray(image, dtype=np.int16)).max()
    assert diff <= levels, f"{diff} levels apart"


def test_txt2img_equals_the_python_api(server, python_api):
    r = server.client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "negative_prompt": "dark", "seed": 5,
                                                      "sampler_name": "Euler a", "batch_size": 2, **SMALL})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [5, 6] and info["seed"] == 5 and info["sampler_name"] == "Euler a"
    assert body["parameters"]["prompt"] == "a red circle" and len(body["images"]) == 2
    for b64, seed, infotext in zip(body["images"], (5, 6), info["infotexts"]):
        alone = python_api("a red circle", negative_prompt="dark", seed=seed, scheduler="euler-a",
                           num_inference_steps=3, height=64, width=64, guidance_scale=7.0)
        _assert_same(b64, alone.images[0], levels=1)  # a batch of two against one image alone
        assert _image(b64).info["parameters"] == alone.parameters[0] == infotext


def test_img2img_and_inpainting_equal_the_python_api(server, python_api):
    init = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for extra, kwargs in (({}, {}), ({"mask": _png(mask)}, {"mask_image": mask})):
        r = server.client.post("/sdapi/v1/img2img", json={"prompt": "a blue square", "seed": 3, "init_images": [_png(init)],
                                                          "denoising_strength": 0.6, "sampler_name": "DDIM", **extra,
                                                          **SMALL})
        assert r.status_code == 200, r.text
        assert r.json()["parameters"]["init_images"] is None  # include_init_images is false
        alone = python_api("a blue square", image=init, strength=0.6, seed=3, scheduler="ddim", num_inference_steps=3,
                           height=64, width=64, guidance_scale=7.0, **kwargs)
        _assert_same(r.json()["images"][0], alone.images[0])


def test_the_other_endpoints(server):
    c = server.client
    names = [s["name"] for s in c.get("/sdapi/v1/samplers").json()]
    assert {"Euler a", "DPM++ 2M Karras", "DDIM", "PLMS"} <= set(names)
    [model] = c.get("/sdapi/v1/sd-models").json()
    options = c.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == model["title"] and model["hash"]
    assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": model["title"], "samples_format": "png"}).json() == {}
    other = c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "v1-5-pruned.safetensors"})
    assert other.status_code == 422 and "serves one model" in other.json()["detail"]
    progress = c.get("/sdapi/v1/progress").json()
    assert set(progress) >= {"progress", "eta_relative", "state"} and "sampling_step" in progress["state"]
    assert c.post("/sdapi/v1/interrupt").json() == {}
    made = c.post("/sdapi/v1/txt2img", json={"prompt": "a (red:1.2) circle", "seed": 11, **SMALL}).json()
    info = c.post("/sdapi/v1/png-info", json={"image": made["images"][0]}).json()
    assert info["parameters"]["Prompt"] == "a (red:1.2) circle" and info["parameters"]["Seed"] == "11"
    assert info["parameters"]["Size-1"] == "64" and info["info"].startswith("a (red:1.2) circle")
    assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").json()["status"] == "ready"
    assert "sdrt_images_total" in c.get("/metrics").text


def test_interrupt_stops_the_running_job(server):
    def slow():
        return server.client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 1, "width": 256, "height": 256,
                                                             "steps": 150})
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(slow)
        deadline = time.time() + 60
        while time.time() < deadline and server.client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 2:
            time.sleep(0.05)
        started = time.time()
        server.client.post("/sdapi/v1/interrupt")
        r = future.result(timeout=120)
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert time.time() - started < 30  # it did not run its 150 steps


def test_compatible_requests_share_u_net_calls_and_keep_their_own_images(server, python_api):
    before = _metric(server, 'sdrt_component_calls_total{component="unet"}')
    requests = [{"prompt": p, "seed": s, "sampler_name": "DPM++ 2M", **SMALL}
                for p, s in (("a red circle", 21), ("a blue square", 22), ("a green triangle", 23),
                             ("a red square", 24), ("a blue circle", 25), ("a green square", 26))]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda body: server.client.post("/sdapi/v1/txt2img", json=body), requests))
    calls = _metric(server, 'sdrt_component_calls_total{component="unet"}') - before
    assert calls < len(requests) * SMALL["steps"], f"{calls:.0f} U-Net calls for {len(requests)} requests: no batching"
    for body, answer in zip(requests, answers):
        assert answer.status_code == 200
        info = json.loads(answer.json()["info"])
        assert info["prompt"] == body["prompt"] and info["all_seeds"] == [body["seed"]]
        alone = python_api(body["prompt"], seed=body["seed"], scheduler="dpm++2m", num_inference_steps=3, height=64,
                           width=64, guidance_scale=7.0)
        _assert_same(answer.json()["images"][0], alone.images[0], levels=1)


def test_bounded_concurrent_load_loses_nothing(folder):
    server = Server(folder, "--max-batch", "4", "--max-queue", "6")
    try:
        bodies = [{"prompt": f"load {i}", "seed": 1000 + i, "width": 64, "height": 64, "steps": 2} for i in range(40)]
        busy = []

        def client(body):  # retries a 503 a few times, as a client honouring Retry-After would (shortened here)
            for _ in range(20):
                answer = server.client.post("/sdapi/v1/txt2img", json=body)
                if answer.status_code != 503:
                    return answer
                busy.append(answer)
                time.sleep(0.1)
            return answer

        started = time.time()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(client, bodies))
        assert time.time() - started < 120
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 30, statuses
        assert all(b.headers["retry-after"] and "busy" in b.json()["detail"] for b in busy)
        for body, answer in zip(bodies, answers):
            if answer.status_code == 200:
                info = json.loads(answer.json()["info"])
                assert info["prompt"] == body["prompt"] and info["all_seeds"] == [body["seed"]]
        assert _metric(server, "sdrt_images_total") == statuses.count(200)  # nothing generated twice
    finally:
        server.close()


def test_bad_requests_get_4xx_that_say_why(server):
    c = server.client
    cases = [
        (c.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"}), "not JSON"),
        (c.post("/sdapi/v1/txt2img", json={"steps": "many"}), "steps"),
        (c.post("/sdapi/v1/txt2img", json={"restore_faces": True, **SMALL}), "restore_faces"),
        (c.post("/sdapi/v1/txt2img", json={"enable_hr": True, **SMALL}), "enable_hr"),
        (c.post("/sdapi/v1/img2img", json={"initial_noise_multiplier": 0, **SMALL}), "initial_noise_multiplier"),
        (c.post("/sdapi/v1/img2img", json={"mask_round": False, **SMALL}), "mask_round"),
        (c.post("/sdapi/v1/txt2img", json={"width": 2048, "height": 2048, "steps": 2}), "--max-pixels"),
        (c.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64, "steps": 1000}), "--max-steps"),
        (c.post("/sdapi/v1/txt2img", json={"batch_size": 4, "n_iter": 4, **SMALL}), "--max-images"),
        (c.post("/sdapi/v1/txt2img", json={"prompt": "x" * 5000, **SMALL}), "--max-prompt-chars"),
        (c.post("/sdapi/v1/txt2img", json={"sampler_name": "Euler z", **SMALL}), "sampler"),
        (c.post("/sdapi/v1/txt2img", json={"width": 70, "height": 64, "steps": 2}), "multiple"),
        (c.post("/sdapi/v1/img2img", json={"init_images": ["bm90IGFuIGltYWdl"], **SMALL}), "does not decode"),
        (c.post("/sdapi/v1/img2img", json={"init_images": ["/etc/passwd"], **SMALL}), "does not decode"),
        (c.post("/sdapi/v1/img2img", json=SMALL), "init_images"),
        (c.post("/sdapi/v1/png-info", json={"image": "@@@"}), "does not decode"),
        (c.post("/sdapi/v1/txt2img", content=b"x" * (21 * 1024 * 1024), headers={"content-type": "application/json"}),
         "--max-body-bytes"),
    ]
    for answer, words in cases:
        assert answer.status_code == 422, (words, answer.status_code, answer.text[:200])
        assert words in answer.json()["detail"], (words, answer.json())


def test_queue_full_and_timeout(folder):
    server = Server(folder, "--max-batch", "1", "--max-queue", "1", "--timeout", "1.5")
    try:
        slow = {"prompt": "slow", "width": 256, "height": 256, "steps": 60}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: server.client.post("/sdapi/v1/txt2img", json={**slow, "seed": i}), range(4)))
        statuses = sorted(a.status_code for a in answers)
        assert 503 in statuses and 504 in statuses, statuses
        late = next(a for a in answers if a.status_code == 504)
        assert "--timeout" in late.json()["detail"]
    finally:
        server.close()


def test_a_client_that_leaves_costs_nothing(folder):
    server = Server(folder, "--max-batch", "1")
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(server.client.post, "/sdapi/v1/txt2img",
                                  json={"prompt": "stays", "seed": 1, "width": 256, "height": 256, "steps": 60})
            time.sleep(0.5)
            with pytest.raises(httpx.ReadTimeout):  # queued behind the first, then gone
                server.client.post("/sdapi/v1/txt2img", json={"prompt": "leaves", "seed": 2, **SMALL}, timeout=0.5)
            assert running.result(timeout=120).status_code == 200
        time.sleep(1.0)
        assert _metric(server, "sdrt_images_total") == 1  # the request that left was never run
    finally:
        log = server.log()
    assert "status=499" in log


def test_a_client_that_leaves_frees_its_place_and_stops_its_run(folder):
    server = Server(folder, "--max-batch", "1", "--max-queue", "1")
    long = {"prompt": "long", "seed": 1, "width": 256, "height": 256, "steps": 150}
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(server.client.post, "/sdapi/v1/txt2img", json=long, timeout=8)
            deadline = time.time() + 30
            while server.client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
                assert time.time() < deadline
                time.sleep(0.05)
            for seed in (2, 3):  # the queue holds one: the second is queued (not 503) only if the first left it
                with pytest.raises(httpx.ReadTimeout):
                    server.client.post("/sdapi/v1/txt2img", json={"prompt": "gone", "seed": seed, **SMALL},
                                       timeout=0.6)
                time.sleep(0.4)
            with pytest.raises(httpx.ReadTimeout):  # the running job's client leaves too
                running.result(timeout=60)
        left = time.time()
        while server.client.get("/sdapi/v1/progress").json()["state"]["sampling_steps"]:
            assert time.time() - left < 5, "the run went on after its client left"
            time.sleep(0.05)
        assert _metric(server, "sdrt_images_total") == 0  # nothing decoded, nothing else run
    finally:
        log = server.log()
    assert log.count("status=499") == 3


def test_api_auth(folder):
    server = Server(folder, "--api-auth", "alice:s3cret,bob:hunter2")
    try:
        c = server.client
        assert c.get("/health").status_code == 200  # operations stay open
        assert c.get("/sdapi/v1/samplers").status_code == 401
        denied = c.get("/sdapi/v1/samplers", auth=("alice", "wrong"))
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Basic"
        assert c.get("/sdapi/v1/samplers", auth=("bob", "hunter2")).status_code == 200
        assert c.post("/sdapi/v1/txt2img", json=SMALL, auth=("alice", "s3cret")).status_code == 200
    finally:
        server.close()


def test_ray_serve_two_cpu_replicas(folder, python_api):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from ray import serve

    from sdrt.serve import ServeOptions
    from sdrt.serve.ray_app import deployment

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(str(folder), ServeOptions(warmup=False), replicas=2, cpus=0.5), route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c, ThreadPoolExecutor(4) as pool:
            bodies = [{"prompt": "a red circle", "seed": 40 + i, **SMALL} for i in range(4)]
            answers = list(pool.map(lambda b: c.post("/sdapi/v1/txt2img", json=b), bodies))
        for body, answer in zip(bodies, answers):
            assert answer.status_code == 200, answer.text
            alone = python_api("a red circle", seed=body["seed"], num_inference_steps=3, height=64, width=64,
                               guidance_scale=7.0, scheduler="euler")
            _assert_same(answer.json()["images"][0], alone.images[0], levels=1)
        status = serve.status().applications["default"].deployments["sdrt"]
        assert status.replica_states.get("RUNNING") == 2
        _a_replica_dies_mid_request(port, serve)
    finally:
        serve.shutdown()
        ray.shutdown()


def _a_replica_dies_mid_request(port: int, serve) -> None:
    """The replica running a request is killed (SIGKILL): that client gets an error, Ray starts a replica in its
    place, and the next requests succeed."""
    long = {"prompt": "long", "seed": 1, "width": 256, "height": 256, "steps": 150}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c, ThreadPoolExecutor(1) as pool:
        doomed = pool.submit(c.post, "/sdapi/v1/txt2img", json=long)
        busy = _busy_replica(_replica_pids())
        os.kill(busy, signal.SIGKILL)
        try:
            assert doomed.result(timeout=60).status_code >= 500
        except httpx.TransportError:
            pass  # or the connection closes: either way the client learns it failed
        deadline = time.time() + 120
        while True:
            states = serve.status().applications["default"].deployments["sdrt"].replica_states
            if states.get("RUNNING") == 2 and busy not in _replica_pids():
                break
            assert time.time() < deadline, f"the replica did not come back: {states}"
            time.sleep(0.5)
        with ThreadPoolExecutor(2) as requests:
            answers = list(requests.map(lambda i: c.post("/sdapi/v1/txt2img", json={"prompt": "after", "seed": i,
                                                                                     **SMALL}), range(2)))
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]


def _replica_pids() -> list[int]:
    """The processes of the Ray Serve replicas (Ray titles them ``ray::ServeReplica:APP:DEPLOYMENT``)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::ServeReplica:default:sdrt"):
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def _busy_replica(pids: list[int], timeout: float = 60) -> int:
    """The replica whose CPU time grows (the one running the request)."""
    def cpu_seconds(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    deadline = time.time() + timeout
    while time.time() < deadline:
        before = {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(1.0)
        grown = {pid: cpu_seconds(pid) - t for pid, t in before.items()}
        busy = max(grown, key=grown.get)
        if grown[busy] > 0.5:
            return busy
    raise AssertionError(f"no replica of {pids} is running the request")
