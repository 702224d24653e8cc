"""The same FastAPI app as Ray Serve replicas: one per GPU where there are GPUs, CPU replicas otherwise, each with
its own model, queue and batcher.

    sdrt serve OUT --ray --replicas 2                                   (a local Ray, or the cluster in RAY_ADDRESS)
    SDRT_EXPORT=OUT serve run sdrt.serve.ray_app:app                    (Ray's own CLI, or a Serve config file)
"""

from __future__ import annotations

import os

import ray
from ray import serve

from .access import Limits
from .app import create_app
from .service import ServeOptions


def deployment(folder: str, options: ServeOptions = ServeOptions(), limits: Limits = Limits(),
               credentials: dict[str, str] | None = None, replicas: int | str = 1, max_replicas: int | None = None,
               gpus: float | None = None, cpus: float = 1.0):
    """A bound Ray Serve application. ``replicas``: a fixed count, or ``"auto"`` for autoscaling between 1 and
    ``max_replicas``; ``gpus`` per replica: by default one where the Ray cluster has GPUs (or the backend is a
    TensorRT flavour), none otherwise."""
    app = create_app(folder, options, limits, credentials, load_in_background=False)
    if gpus is None:
        has_gpus = ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1
        gpus = 1.0 if has_gpus or options.backend.startswith(("tensorrt", "trt")) else 0.0
    scaling = ({"autoscaling_config": {"min_replicas": 1, "max_replicas": max_replicas or 4,
                                       "target_ongoing_requests": options.max_batch}}
               if replicas == "auto" else {"num_replicas": int(replicas)})

    @serve.deployment(name="sdrt", ray_actor_options={"num_gpus": gpus, "num_cpus": cpus},
                      max_ongoing_requests=options.max_queue + options.max_batch, **scaling)
    @serve.ingress(app)
    class SdrtReplica:
        def __init__(self):
            app.state.get_service().load()  # the replica is ready once its model is loaded and warm

    return SdrtReplica.bind()


def app_from_env():
    """For ``serve run sdrt.serve.ray_app:app``: the export folder and backend from the environment."""
    folder = os.environ.get("SDRT_EXPORT")
    if not folder:
        raise SystemExit("set SDRT_EXPORT to the export folder (and SDRT_BACKEND, SDRT_REPLICAS if needed)")
    options = ServeOptions(backend=os.environ.get("SDRT_BACKEND", "onnxruntime"))
    return deployment(folder, options, replicas=os.environ.get("SDRT_REPLICAS", "1"))


def __getattr__(name: str):
    if name == "app":  # built on access, so importing this module needs no SDRT_EXPORT
        return app_from_env()
    raise AttributeError(name)
