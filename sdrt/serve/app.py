"""The FastAPI app: AUTOMATIC1111's routes over one Service, plus /health, /ready and /metrics.

Every user mistake is a 4xx with a message that says what to do (never a traceback); bodies are checked against
the size limit before they are parsed; requests wait in one bounded queue (503 + Retry-After when full, 504 past
the timeout) and a client that goes away before its run starts costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from ..errors import SdrtError, UserInputError
from ..families import FAMILIES
from ..manifest import load_manifest
from ..runtime.schedulers import a1111_name, default_sampler, model_samplers
from . import a1111, controlnet_api, settings
from .access import Limits, authorized
from .batcher import Batcher, QueueFull
from .service import ServeOptions, Service

log = logging.getLogger("sdrt")

OPEN_PATHS = {"/health", "/ready", "/metrics"}  # no credentials needed (no model output, no control)
PAGE = Path(__file__).parent / "page"  # the page GET / serves (index.html, page.js, page.css)


class _PngInfoRequest(BaseModel):
    image: str


def create_app(folder: str | Path, options: ServeOptions = ServeOptions(), limits: Limits = Limits(),
               credentials: dict[str, str] | None = None, load_in_background: bool = True) -> FastAPI:
    credentials = credentials or {}
    # The service (model, metrics, locks) and the batcher are made in the process that serves, on first need:
    # a Ray Serve replica receives this app pickled, before anything is loaded.
    made: dict = {}

    def get_service() -> Service:
        if "service" not in made:
            made["service"] = Service(folder, options)
        return made["service"]

    def get_batcher() -> Batcher:
        if "batcher" not in made:
            svc = get_service()
            made["batcher"] = Batcher(svc.run_batch, svc.max_batch, options.max_queue, svc.on_batch)
            made["batcher"].start()
        return made["batcher"]

    async def lifespan(app: FastAPI):
        loading = asyncio.get_running_loop().run_in_executor(None, get_service().load)
        if not load_in_background:
            await loading
        try:
            yield
        finally:
            if "batcher" in made:
                await made["batcher"].stop()
            get_service().close()

    app = FastAPI(title="sdrt", description="AUTOMATIC1111-compatible API on sdrt's runtime", lifespan=lifespan)
    app.state.get_service = get_service

    # -- errors, limits, access ----------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(422, _invalid(exc.errors()))

    @app.exception_handler(UserInputError)
    async def user_error(request: Request, exc: UserInputError):
        return _error(422, str(exc))

    app.add_middleware(_Guard, credentials=credentials, limits=limits)

    # -- generation ----------------------------------------------------------------------------------------

    async def generate(request: Request, model: type[a1111._Common], route: str):
        service, batcher = get_service(), get_batcher()
        metrics = service.metrics
        rid = uuid.uuid4().hex[:8]
        arrived = time.perf_counter()
        status, summary, job = 500, {}, None
        try:
            body = await request.body()
            limits.check_body(len(body))  # a body sent without a Content-Length gets here unchecked
            try:
                data = json.loads(body or b"{}")
                req = model.model_validate(data)
            except json.JSONDecodeError as e:
                raise UserInputError(f"the body is not JSON ({e})") from None
            except ValidationError as e:
                raise UserInputError(_invalid(e.errors())) from None
            summary = {"size": f"{req.width}x{req.height}", "steps": req.steps, "sampler": req.sampler_name or req.sampler_index}
            if not service.ready:
                status = 503
                return _error(503, service.error or "the model is still loading; retry shortly", **{"Retry-After": "5"})
            refused = a1111.refused_fields(req)
            if refused:
                raise UserInputError(f"sdrt does not implement {', '.join(refused)}: send the default value or "
                                     "leave the field out")
            _check_model(service, (req.override_settings or {}).get("sd_model_checkpoint"))
            sampling = settings.sampling_of(req, service.a1111_options, service.pipe.manifest.family)
            limits.check(req.width, req.height, req.steps, (req.batch_size or 1) * (req.n_iter or 1),
                         [req.prompt or "", req.negative_prompt or ""])
            job = a1111.job_of(req, sampling, a1111.refiner_of(req, service.refiner), service.pipe.manifest)
            try:
                future = batcher.submit(job)
            except QueueFull as e:
                status = 503
                return _error(503, f"the server is busy ({e}); retry later", **{"Retry-After": "2"})
            metrics.queue_depth.set(batcher.depth)
            result = await _wait(request, job, future, options.timeout - (time.perf_counter() - arrived), batcher)
            if result is _GONE:
                status = 499  # nginx's "client closed request": nobody reads this answer
                return _error(499, "the client went away")
            if result is _TIMED_OUT:
                status = 504
                return _error(504, f"the request waited longer than this server's timeout of {options.timeout:.0f} s "
                                  "(--timeout); retry, or ask for less")
            status = 200
            return JSONResponse(a1111.response(req, sampling, result, service.model_name, service.model_hash),
                                headers={"X-Queue-Wait": f"{job.started - job.enqueued:.4f}"})
        except UserInputError as e:
            status = 422
            return _error(422, str(e))
        except SdrtError as e:  # a fault of the model or backend, not of the request
            status = 500
            log.error("request %s failed: %s", rid, e)
            return _error(500, str(e))
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.observe(time.perf_counter() - arrived)
            metrics.queue_depth.set(batcher.depth)
            queued = (job.started or time.perf_counter()) - job.enqueued if job else 0.0
            log.info("request %s %s %s steps=%s sampler=%s queue=%.2fs total=%.2fs status=%s", rid, route,
                     summary.get("size", "?"), summary.get("steps", "?"), summary.get("sampler", "?"), queued,
                     time.perf_counter() - arrived, status)

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request):
        return await generate(request, a1111.Txt2ImgRequest, "txt2img")

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request):
        return await generate(request, a1111.Img2ImgRequest, "img2img")

    # -- the rest of A1111's API ---------------------------------------------------------------------------

    @app.get("/sdapi/v1/samplers")
    async def samplers():
        return a1111.samplers()

    @app.get("/sdapi/v1/schedulers")
    async def schedulers():
        return settings.schedulers()

    # What clients probe before they send a job, in A1111's shapes: sdrt has nothing of these kinds
    for path, answer in a1111.EMPTY_LISTINGS.items():
        app.add_api_route(path, _constant(answer), methods=["GET"])

    @app.get("/sdapi/v1/memory")
    async def memory():
        return a1111.memory()

    @app.get("/sdapi/v1/cmd-flags")
    async def cmd_flags():
        return {"api": True, "nowebui": True, "api_auth": None, "ckpt": str(folder),
                "backend": get_service().options.backend}

    @app.get("/sdapi/v1/sd-models")
    async def sd_models():
        service = get_service()
        models = [_model_entry(service.model_title, service.model_name, service.model_hash, service.folder.name)
                  | {"sdrt": _model_defaults(service)}]
        if service.refiner:  # what a request's refiner_checkpoint may name
            models.append(_model_entry(a1111.checkpoint_title(*service.refiner), *service.refiner,
                                       str(service.options.refiner)))
        return models

    # -- AUTOMATIC1111's ControlNet extension ----------------------------------------------------------------

    @app.get("/controlnet/version")
    async def controlnet_version():
        return {"version": controlnet_api.API_VERSION}

    @app.get("/controlnet/model_list")
    async def controlnet_models(update: bool = True):
        service = get_service()
        return controlnet_api.model_list(service.pipe.manifest) if service.ready else {"model_list": []}

    @app.get("/controlnet/module_list")
    async def controlnet_modules(alias_names: bool = False):
        return controlnet_api.module_list()

    @app.post("/controlnet/detect")
    async def controlnet_detect(request: Request):
        try:
            return controlnet_api.detect(json.loads(await request.body() or b"{}"))
        except json.JSONDecodeError as e:
            return _error(422, f"the body is not JSON ({e})")

    @app.get("/sdapi/v1/loras")
    async def loras():
        """The LoRA folder's files, as AUTOMATIC1111 lists them (a prompt names one with <lora:NAME:WEIGHT>)."""
        library = get_service().pipe.loras if get_service().ready else None
        found = library.available() if library else {}
        return [{"name": name, "alias": name, "path": str(path), "metadata": {}} for name, path in found.items()]

    @app.post("/sdapi/v1/refresh-loras")
    async def refresh_loras():
        return None  # the folder is read on every request and every listing

    @app.get("/sdapi/v1/embeddings")
    async def embeddings():
        """The embeddings folder's textual inversions (a prompt uses one by its name)."""
        service = get_service()
        return a1111.embedding_listing(*(service.pipe.textual_inversions() if service.ready else ({}, {})))

    @app.post("/sdapi/v1/refresh-embeddings")
    async def refresh_embeddings():
        return None  # the folder is read on every request and every listing

    @app.get("/sdapi/v1/options")
    async def get_options():
        return _options(get_service())

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request):
        service = get_service()
        try:
            changes = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as e:
            return _error(422, f"the body is not JSON ({e})")
        if not isinstance(changes, dict):
            return _error(422, "options take a JSON object of option names and values")
        _check_model(service, changes.pop("sd_model_checkpoint", None))
        # kept as A1111 keeps them: the sampling ones apply to later requests, the rest change nothing here
        service.a1111_options.update(settings.checked_options(changes))
        return {}

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False):
        service = get_service()
        p = service.progress
        running = bool(p.steps)
        image = None if skip_current_image else service.current_image()
        return {"progress": min(p.fraction(), 1.0) if running else 0.0, "eta_relative": p.eta() if running else 0.0,
                "state": {"skipped": False, "interrupted": p.interrupted, "stopping_generation": False, "job": p.job,
                          "job_count": p.job_count if running else 0, "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
                          "job_no": 0, "sampling_step": p.step, "sampling_steps": p.steps},
                "current_image": a1111.png_base64(image, "") if image is not None else None, "textinfo": None}

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        get_service().interrupt()
        return {}

    @app.post("/sdapi/v1/png-info")
    async def png_info(body: _PngInfoRequest):
        return a1111.png_info(body.image)

    # -- the page: static files of the package, which use the routes above and nothing else ------------------

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE), name="page")

    # -- operations ----------------------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        service = get_service()
        if service.ready:
            return {"status": "ready", "backend": service.pipe.backend.name, "device": service.pipe.backend.device}
        return JSONResponse({"status": "failed" if service.error else "loading", "detail": service.error}, 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(get_service().metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Guard:
    """Access control and the body-size limit, before anything else reads the request; a plain ASGI middleware
    (Starlette's BaseHTTPMiddleware would hide a client's disconnect from the routes)."""

    def __init__(self, app, credentials: dict[str, str], limits: Limits):
        self.app, self.credentials, self.limits = app, credentials, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = None
        if scope["path"] not in OPEN_PATHS and not authorized(headers.get("authorization"), self.credentials):
            refusal = _error(401, "Incorrect username or password", **{"WWW-Authenticate": "Basic"})
        elif headers.get("content-length", "").isdigit():
            try:
                self.limits.check_body(int(headers["content-length"]))
            except UserInputError as e:
                refusal = _error(422, str(e))
        if refusal is not None:
            return await refusal(scope, receive, send)
        started = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append(
                    (b"x-process-time", f"{time.perf_counter() - started:.4f}".encode()))
            await send(message)

        await self.app(scope, receive, timed_send)


_ERROR_NAMES = {401: "Unauthorized", 422: "UnprocessableEntity", 499: "ClientClosedRequest", 500: "InternalServerError",
                503: "ServiceUnavailable", 504: "GatewayTimeout"}


def _error(status: int, detail: str, **headers) -> JSONResponse:
    return JSONResponse({"error": _ERROR_NAMES.get(status, "Error"), "detail": detail}, status, headers=headers)


def _invalid(errors: list[dict]) -> str:
    """pydantic's errors as one line: ``invalid request: steps: Input should be a valid integer``."""
    def where(loc) -> str:
        loc = loc[1:] if loc and loc[0] == "body" else loc  # FastAPI prefixes the body's fields with "body"
        return ".".join(str(p) for p in loc) or "body"

    return "invalid request: " + "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in errors)


def _options(service: Service) -> dict:
    return {**service.a1111_options, "sd_model_checkpoint": service.model_title, "sd_checkpoint_hash": None}


def _constant(answer):
    async def route():
        return answer
    return route


def _model_entry(title: str, name: str, digest: str, filename: str) -> dict:
    """One of A1111's SDModelItem."""
    return {"title": title, "model_name": name, "hash": digest, "sha256": None, "filename": filename, "config": None}


def _model_defaults(service: Service) -> dict:
    """sdrt's addition to a model entry, for the page and clients: the export's native size, sizes, batch, the
    samplers it runs and its default; for Flux its distilled CFG scale (the guidance input) and a CFG scale of 1
    (true CFG off), as Forge starts it."""
    manifest = service.pipe.manifest if service.ready else load_manifest(service.folder)
    family = FAMILIES[manifest.family]
    config = manifest.scheduler_config
    guidance = {"cfg_scale": 1.0, "distilled_cfg_scale": family.default_guidance} if family.distilled_guidance else {}
    return {"default_size": manifest.default_size, "size_range": list(manifest.size_range),
            "max_batch": service.max_batch, "default_sampler": a1111_name(default_sampler(config)),
            "samplers": [a1111_name(s) for s in model_samplers(config)], "family": manifest.family, **guidance}


def _check_model(service: Service, model) -> None:
    """A request or option naming a checkpoint must name the one served (by title or name)."""
    if model is not None and model not in (service.model_title, service.model_name):
        raise UserInputError(f"this server serves one model ({service.model_title}) and cannot load {model!r}; start "
                             "another sdrt serve for it")


_TIMED_OUT, _GONE = object(), object()


async def _wait(request: Request, job, future: asyncio.Future, timeout: float, batcher: Batcher):
    """The job's result; _TIMED_OUT past the timeout, _GONE when the client went away (the job is then cancelled: it
    leaves the queue at once, or stops at its next step if it runs alone: a request nobody waits for costs nothing)."""
    deadline = time.perf_counter() + max(timeout, 0.0)
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            batcher.cancel(job)
            return _TIMED_OUT
        done, _ = await asyncio.wait({future}, timeout=min(remaining, 0.25))
        if done:
            return future.result()
        if await request.is_disconnected():
            batcher.cancel(job)
            return _GONE
