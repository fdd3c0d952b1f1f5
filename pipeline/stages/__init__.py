"""The commands of the CLI, one module per group: each stage reads params, works through the adapters and returns.

training (make-data, train), gate (gate, pr-comment), release (register, promote, rollback), smoke, images (image,
publish), scoring (score), admin (tracking-server, keygen, status) and flow (run: the whole gated flow). A check that
says no raises CheckFailed after recording why.
"""
