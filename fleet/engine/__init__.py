"""The execution engine: which steps of a run are ready, from what has run so far (pure), and
the compiled, cached form of a workflow that makes that decision cheap on every step."""
