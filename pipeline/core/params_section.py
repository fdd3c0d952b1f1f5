"""What every params section is: frozen, strictly typed, an unknown key an error; and MLflow's rule for alias names."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

ALIAS_NAME = re.compile(r"^[\w\-]{1,255}$")  # MLflow's rule; `latest` and `v<N>` are reserved
RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)


class Section(BaseModel):
    """A params section: frozen, strictly typed, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
