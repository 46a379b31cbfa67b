"""workermeter: how busy are your Python web workers, and how many do you need?"""

from .asgi import ASGIMiddleware
from .exposition import serve_metrics
from .recorder import Recorder
from .wsgi import WSGIMiddleware

__all__ = ["ASGIMiddleware", "Recorder", "WSGIMiddleware", "serve_metrics"]
