"""Send-time routing: the Celery router, the routing policies, the live fleet state they read,
and the op profiles they estimate from."""
