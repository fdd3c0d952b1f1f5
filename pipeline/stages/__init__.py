"""The commands of the CLI, one module per group: each stage reads params, works through the adapters and returns.

training (make-data, train), gate (gate, pr-comment), release (register, promote, rollback), deploy (the Kubernetes
deploy after promote and rollback), smoke, images (image, publish), scoring (score), rollout (rollout, watch), relay
(alert-relay), admin (tracking-server, keygen, status) and flow (run: the whole gated flow). A check that says no
raises CheckFailed after recording why.
"""
