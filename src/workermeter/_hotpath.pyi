# The compiled hot path has the interface of the pure-Python one it is built from.
from .asgi import ASGICall as ASGICall
from .hotpath import ActiveCore as ActiveCore
from .hotpath import LaneCore as LaneCore
from .wsgi import WSGICall as WSGICall
