"""The worker side: what only a worker host runs -- the fleet's Celery tasks (``fleet.step``,
the canvas tasks, ``celery:`` steps), the worker process's runtime, the heartbeat bootstep,
the sweeper and orphan check, start leases, lanes, the ``fleet worker`` command, and the
built-in ops (:mod:`workers.ops`) with their model runtimes. Install it with its models as
``agent-fleet[workers]``; ``fleet`` (the client side) never imports it."""
