"""CI glue: GitHub Actions outputs and comments, progress lines, and provenance (git sha, actor)."""
