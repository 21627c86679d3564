"""What runs inside a worker process: the Celery app, the ``fleet.step`` task, the heartbeat
bootstep, the sweeper that restores stranded messages, and the result backend."""
