# gunicorn with workermeter: gunicorn -c gunicorn.conf.py myapp.wsgi:application
#
# The app is wrapped in workermeter.WSGIMiddleware (or ASGIMiddleware) as usual. These hooks give
# all workers one store and serve the metrics of every worker from the arbiter, which is never
# busy with a request: http://127.0.0.1:9191/metrics. Another port or address:
# WORKERMETER_PORT=9200 WORKERMETER_BIND=10.0.0.5 in gunicorn's environment, or `-e` / raw_env.
from workermeter.gunicorn import (  # noqa: F401  (gunicorn calls the hooks by their names)
    child_exit,
    on_exit,
    on_starting,
    when_ready,
    worker_exit,
)

bind = "127.0.0.1:8000"
workers = 4  # processes; worker_class = "gthread" with threads = N serves N requests in each
