"""Hardware-class workers and the ops they run.

``workers.launch`` builds the Celery worker command for a class preset; ``workers.heartbeat``
is the worker bootstep that announces a live worker and its class; ``workers.ops`` holds the
op modules registered with :func:`fleet.ops.op`.
"""
