"""``sdrt serve``: an HTTP service that speaks AUTOMATIC1111's API over one export folder, batches compatible
requests, and scales out as Ray Serve replicas (``sdrt.serve.ray_app``).

FastAPI, uvicorn and prometheus-client come with ``pip install 'sdrt[serve]'``; Ray with ``'sdrt[ray]'``.
"""

from .access import Limits, parse_credentials
from .service import ServeOptions

__all__ = ["create_app", "Limits", "ServeOptions", "parse_credentials"]


def create_app(*args, **kwargs):
    from .app import create_app as make

    return make(*args, **kwargs)
