"""The slow path: a hardware catalogue with total cost of ownership, a planner that sizes and
places a heterogeneous fleet under a latency SLA (a mixed-integer program), and the queueing
estimates that check its plans."""
