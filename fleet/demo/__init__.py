"""The main job (``fleet demo``: a voice support agent on a local fleet) and the pieces the
evaluation and the benchmarks share with it: the example order API as a process, speech to
a file."""
