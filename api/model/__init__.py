"""The request path: validation, the fast paths, the compiled pipeline and /invocations scoring."""
